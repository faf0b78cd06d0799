"""Trial cases of group data (benchmarks/trial.py): bad values in shards and manifests: each must
stop the run naming file, row group, row and column (or train correctly, for id types the
schema allows)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trial_harness import CASES, Ctx, Outcome, case, expect_error, expect_ok, metrics, train


def _variant(ctx: Ctx, name: str, change, split: str = "train", index: int = -1, rg: int = 512) -> Path:
    """A copy of the tiny data whose ``split`` shard ``index`` is rewritten by ``change``."""
    root = ctx.path(f"data_{name}")
    shutil.copytree(ctx.data, root)
    m = json.loads((root / "_manifest.json").read_text())
    path = root / m["splits"][split]["files"][index]
    if change is not None:
        pq.write_table(change(pq.read_table(path)), path, row_group_size=rg)
    return root


def _set(t: pa.Table, name: str, values, type=None) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, pa.array(values, type=type))


def _dense(value, row: int = 700, dtype=np.float32):
    def change(t):
        x = t.column("int_4").to_numpy(zero_copy_only=False).astype(dtype)
        x[row] = value
        return _set(t, "int_4", x)

    return change


def _ids(row: int, value, dtype=np.int64, name: str = "cat_2"):
    def change(t):
        x = t.column(name).to_numpy().astype(dtype)
        x[row] = value
        return _set(t, name, x)

    return change


def _data_error(name: str, change, pattern: str, split: str = "train", *extra: str):
    def fn(ctx: Ctx) -> Outcome:
        root = _variant(ctx, name, change, split)
        # the whole split (max_steps=-1): a bad row must be read to count as found
        return expect_error(train(ctx, ctx.path(f"runs_{name}"), name, "trainer.max_steps=-1", *extra, data=root), pattern)

    return fn


def _card(ctx_data: Path, i: int) -> int:
    return json.loads((ctx_data / "_manifest.json").read_text())["sparse"][i]["cardinality"]


CASES += [
    ("data_inf_dense", "data", _data_error("inf", _dense(np.inf), r"row group 1: column 'int_4' row 188 is inf"), False),
    ("data_neg_inf_dense", "data", _data_error("ninf", _dense(-np.inf), r"column 'int_4' row 188 is -inf"), False),
    ("data_nan_dense", "data", _data_error("nan", _dense(np.nan), r"column 'int_4' row 188 is nan"), False),
    ("data_inf_dense_no_transform", "data",
     _data_error("inf_none", _dense(np.inf), r"column 'int_4' row 188 is inf", "train", "data.dense_transform=none"), False),
    ("data_float64_overflow", "data",
     _data_error("f64", _dense(1e300, dtype=np.float64), r"row 188 is 1e\+300 \(overflows float32\)"), False),
    ("data_inf_in_eval_file", "data",
     _data_error("inf_eval", _dense(np.inf, 900), r"eval/part-00000.parquet row group 1: column 'int_4' row 388 is inf", "eval"), False),
    ("data_nan_in_later_eval_row_group", "data",
     _data_error("nan_eval", _dense(np.nan, 900), r"eval/part-00000.parquet row group 1: column 'int_4' row 388 is nan", "eval"), False),
    ("data_id_too_big", "data", _data_error("big", lambda t: _ids(17, 10**9)(t), r"column 'cat_2' row 17 has id 1000000000 outside"), False),
    ("data_negative_int32_id", "data",
     _data_error("neg32", _ids(17, -3, np.int32), r"column 'cat_2' row 17 has id -3 outside"), False),
    ("data_nan_label", "data", _data_error("nanlabel", lambda t: _set(t, "label", np.where(np.arange(t.num_rows) == 5, np.nan, t.column("label").to_numpy().astype(np.float32))),
                                           r"column 'label' row 5 is nan"), False),
    ("data_label_2", "data", _data_error("label2", lambda t: _set(t, "label", np.where(np.arange(t.num_rows) == 9, 2, t.column("label").to_numpy()).astype(np.int8)),
                                         r"column 'label' row 9 is 2"), False),
    ("data_missing_column", "data", _data_error("nocol", lambda t: t.drop(["cat_7"]), r"missing column 'cat_7'"), False),
    ("data_string_ids", "data", _data_error("strids", lambda t: _set(t, "cat_3", t.column("cat_3").cast(pa.string())),
                                            r"column 'cat_3' has type string; expected int64"), False),
    ("data_null_ids", "data", _data_error("nullids", lambda t: _set(t, "cat_4", pa.array(t.column("cat_4").to_numpy(), mask=np.arange(t.num_rows) == 3)),
                                          r"column 'cat_4' has 1 null ids"), False),
    ("data_empty_shard", "data", _data_error("empty", lambda t: t.slice(0, 0), r"empty shard"), False),
]


@case("data")
def data_truncated_shard(ctx: Ctx) -> Outcome:
    root = _variant(ctx, "trunc", None)
    path = root / "train" / "part-00001.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return expect_error(train(ctx, ctx.path("runs_trunc"), "trunc", data=root), r"part-00001.parquet: not a readable Parquet file")


@case("data")
def data_missing_shard(ctx: Ctx) -> Outcome:
    root = _variant(ctx, "gone", None)
    (root / "train" / "part-00001.parquet").unlink()
    return expect_error(train(ctx, ctx.path("runs_gone"), "gone", data=root), r"part-00001.parquet: listed in the manifest but missing")


def _manifest_case(name: str, edit, pattern: str):
    def fn(ctx: Ctx) -> Outcome:
        root = _variant(ctx, name, None)
        path = root / "_manifest.json"
        obj = json.loads(path.read_text())
        text = edit(obj)
        path.write_text(text if isinstance(text, str) else json.dumps(obj))
        return expect_error(train(ctx, ctx.path(f"runs_{name}"), name, data=root), pattern)

    return fn


CASES += [
    ("data_manifest_cardinality_string", "data",
     _manifest_case("cardstr", lambda o: o["sparse"][3].update(cardinality=str(o["sparse"][3]["cardinality"])),
                    r"_manifest.json: malformed manifest: sparse\[3\] \('cat_3'\) cardinality is '\d+' \(a str\)"), False),
    ("data_manifest_wrong_rows", "data",
     _manifest_case("rows", lambda o: o["splits"]["train"].update(rows=5000), r"split 'train' says 5000 rows; its 2 files hold 4096"), False),
    ("data_manifest_not_json", "data", _manifest_case("notjson", lambda o: "{not json", r"_manifest.json: malformed manifest: .*(not JSON|JSONDecodeError)"), False),
    ("data_manifest_zero_cardinality", "data",
     _manifest_case("card0", lambda o: o["sparse"][0].update(cardinality=0), r"_manifest.json: .*cat_0.* cardinality (is )?0"), False),
]


@case("data")
def data_no_manifest(ctx: Ctx) -> Outcome:
    root = _variant(ctx, "nomanifest", None)
    (root / "_manifest.json").unlink()
    return expect_error(train(ctx, ctx.path("runs_nm"), "nm", "data.synthesize_if_missing=false", data=root), r"_manifest.json: no data manifest")


@case("data")
def data_bad_id_in_later_eval_row_group(ctx: Ctx) -> Outcome:
    card = _card(ctx.data, 5)
    root = _variant(ctx, "evalid", _ids(900, card, name="cat_5"), "eval")
    runs = ctx.path("runs_evalid")
    outcome = expect_error(train(ctx, runs, "evalid", "trainer.checkpoint_every=1", data=root),
                           r"eval/part-00000.parquet row group 1: column 'cat_5' row 388 has id")
    if outcome[0] == "clear" and list((runs / "evalid").glob("*/checkpoints")):
        return "crash", "found only after training started"
    return outcome


def _trains(name: str, change, *extra: str, check=None):
    def fn(ctx: Ctx) -> Outcome:
        root = _variant(ctx, name, change)
        runs = ctx.path(f"runs_{name}")
        r = train(ctx, runs, name, *extra, data=root)

        def ok():
            m = metrics(runs, name)
            good = np.isfinite(m["logloss"]) and 0.0 < m["auc"] < 1.0
            extra_ok, why = check(m) if check else (True, "")
            return good and extra_ok, f"auc {m['auc']:.4f} logloss {m['logloss']:.4f} {why}"

        return expect_ok(r, ok)

    return fn


def _narrow(arrow_type):
    def change(t):
        for name in [c for c in t.column_names if c.startswith("cat_")]:
            t = _set(t, name, t.column(name).to_numpy(), arrow_type)
        return t

    return change


CASES += [
    ("data_int32_ids_train", "data", _trains("int32", _narrow(pa.int32())), False),
    ("data_uint16_ids_train", "data", _trains("uint16", _narrow(pa.uint16())), False),
    ("data_inf_with_zero_policy", "data",
     _trains("zero", _dense(np.inf, 100), "data.non_finite=zero", "trainer.max_steps=-1",  # the whole split: the bad row is read
             check=lambda m: (m.get("data_train_non_finite_values") == 1, f"replaced {m.get('data_train_non_finite_values')}")), False),
]


@case("data")
def data_skip_corrupt_file(ctx: Ctx) -> Outcome:
    root = _variant(ctx, "skip", None)
    (root / "train" / "part-00001.parquet").write_bytes(b"PAR1 junk")
    runs = ctx.path("runs_skip")
    r = train(ctx, runs, "skip", "data.on_bad_file=skip", data=root)
    return expect_ok(r, lambda: (metrics(runs, "skip")["data_train_bad_files"] == 1, "1 bad file counted"))


