"""The cases of the trial (``benchmarks/trial.py``): ``CASES`` = (name, group, fn, slow).

Each ``fn(ctx)`` returns ``(outcome, detail)`` (outcomes: ``trial_harness.OUTCOMES``).
Groups: config (knobs and their sources), data (bad values in shards and manifests),
checkpoint (planted and damaged files), resume (other settings), convert (converter
inputs and signals), fault (killed workers).
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trial_harness import HASH_CONFIG, REPO, TINY, Ctx, Run, cli, expect_error, expect_ok, metrics, sub, train

Outcome = Tuple[str, str]
CASES: List[Tuple[str, str, Callable[[Ctx], Outcome], bool]] = []


def case(group: str, slow: bool = False):
    def register(fn):
        CASES.append((fn.__name__, group, fn, slow))
        return fn

    return register


# ---- config: knobs out of range, names, sources --------------------------------------
def _knob(override: str, pattern: str) -> Callable[[Ctx], Outcome]:
    def fn(ctx: Ctx) -> Outcome:
        runs = ctx.path("knob_runs")
        return expect_error(train(ctx, runs, "knob", override), pattern)

    return fn


for _name, _override, _pattern in [
    ("batch_size_0", "data.batch_size=0", r"override 'data.batch_size=0': data.batch_size=0: must be >= 1"),
    ("batch_size_negative", "data.batch_size=-5", r"override 'data.batch_size=-5'.*must be >= 1"),
    ("eval_batch_size_0", "data.eval_batch_size=0", r"data.eval_batch_size=0: must be >= 1"),
    ("num_workers_0", "cluster.num_workers=0", r"override 'cluster.num_workers=0'.*must be >= 1"),
    ("keep_checkpoints_0", "trainer.keep_checkpoints=0", r"trainer.keep_checkpoints=0: must be >= 1"),
    ("log_every_0", "trainer.log_every=0", r"trainer.log_every=0: must be >= 1"),
    ("ratio_negative", "compression.ratio=-1", r"compression.ratio=-1.0: must be > 0"),
    ("name_climbs_out", "name=../../escaped", r"name='../../escaped': must be a relative path inside runs_dir"),
    ("name_absolute", "name=/tmp/escaped", r"name='/tmp/escaped'"),
    ("kind_bad_override", "embedding.kind=bogus", r"^compactrec train: error: override 'embedding.kind=bogus': 'embedding.kind' is 'bogus'"),
    ("dim_mismatch", "model.embedding_dim=8", r"model.dense_arch must end in model.embedding_dim"),
    ("unknown_key", "trainer.epochz=2", r"override 'trainer.epochz=2': bad key 'trainer.epochz'"),
]:
    CASES.append((f"config_{_name}", "config", _knob(_override, _pattern), False))


@case("config")
def config_yaml_typo(ctx: Ctx) -> Outcome:
    bad = ctx.work / "typo.yaml"
    bad.write_text("data:\n  batch_size: lots\n")
    return expect_error(cli("train", str(bad)), rf"{bad}: bad key 'data.batch_size'")


@case("config")
def config_yaml_zero_batch(ctx: Ctx) -> Outcome:
    bad = ctx.work / "zero.yaml"
    bad.write_text("data:\n  batch_size: 0\n")
    return expect_error(cli("train", str(bad), f"data.path={ctx.data}"), rf"{bad}: data.batch_size=0: must be >= 1")


@case("config")
def config_yaml_syntax(ctx: Ctx) -> Outcome:
    bad = ctx.work / "syntax.yaml"
    bad.write_text("data: [unclosed\n")
    return expect_error(cli("train", str(bad)), rf"{bad}: not valid YAML")


@case("config")
def config_missing_file(ctx: Ctx) -> Outcome:
    return expect_error(cli("train", str(ctx.work / "nope.yaml")), r"nope.yaml: config file not found")


# ---- data: bad values in shards and manifests ------------------------------------------
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
    if outcome[0] == "clear" and (runs / "evalid" / "checkpoints").exists():
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


# ---- checkpoints: planted and damaged files --------------------------------------------
class Planted:
    """Unpickling writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _reseal(folder: Path) -> None:
    """A manifest.json over the folder's current files, as an attacker who can write the
    folder would write one (nothing to do for code without manifests)."""
    try:
        from compactrec.trainer.checkpoint_manifest import hash_files, list_files, write_manifest
    except ImportError:  # benchmarks/trial.py run against code from before issue 15
        return
    write_manifest(folder, hash_files(folder, list(list_files(folder))), 0)


def _copy_base(ctx: Ctx, name: str) -> Tuple[Path, dict]:
    ckpts, base_metrics = ctx.base()
    dst = ctx.path(f"ckpt_{name}")
    shutil.copytree(ckpts, dst)
    return dst, base_metrics


def _resumes_previous(ctx: Ctx, name: str, tamper, warn: str) -> Outcome:
    """Tamper with the newest checkpoint (step 4) of a copy of the base run, resume from the
    folder: recovered = step 4 skipped with a warning naming ``warn``, step 2 used, the
    final weights bitwise equal to the base run's."""
    folder, base = _copy_base(ctx, name)
    tamper(folder / "step_000000004")
    runs = ctx.path(f"runs_{name}")
    r = train(ctx, runs, name, "trainer.checkpoint_every=2", "trainer.keep_checkpoints=3", f"trainer.resume_from={folder}")

    def ok():
        m = metrics(runs, name)
        used = f"resumed from {folder / 'step_000000002'}" in r.out
        warned = "skipping checkpoint" in r.out and warn in r.out
        same = m["weights_digest"] == base["weights_digest"]
        return used and warned and same, f"fell back to step 2: {used}, warning names {warn}: {warned}, weights equal: {same}"

    return expect_ok(r, ok)


def _flip(name: str, at: float = 0.5, n: int = 4096):
    def tamper(step: Path) -> None:
        p = step / name
        raw = bytearray(p.read_bytes())
        i = int(len(raw) * at)
        raw[i : i + n] = bytes(b ^ 0x5A for b in raw[i : i + n])
        p.write_bytes(bytes(raw))

    return tamper


def _truncate(name: str):
    def tamper(step: Path) -> None:
        p = step / name
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    return tamper


@case("checkpoint")
def ckpt_same_size_corruption(ctx: Ctx) -> Outcome:
    return _resumes_previous(ctx, "flip", _flip("__0_0.distcp"), "__0_0.distcp: checksum mismatch")


@case("checkpoint")
def ckpt_truncated_data(ctx: Ctx) -> Outcome:
    return _resumes_previous(ctx, "trunc", _truncate("__0_0.distcp"), "__0_0.distcp")


@case("checkpoint")
def ckpt_no_complete_marker(ctx: Ctx) -> Outcome:
    return _resumes_previous(ctx, "nomark", lambda s: (s / "COMPLETE").unlink(), "COMPLETE")


@case("checkpoint")
def ckpt_edited_meta_json(ctx: Ctx) -> Outcome:
    def tamper(step: Path) -> None:
        meta = json.loads((step / "meta.json").read_text())
        meta["samples"] += 1
        (step / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + " " * 0)

    return _resumes_previous(ctx, "meta", tamper, "meta.json")


@case("checkpoint")
def ckpt_corrupt_metadata_bytes(ctx: Ctx) -> Outcome:
    return _resumes_previous(ctx, "mdflip", _flip(".metadata", 0.5, 64), ".metadata: checksum mismatch")


@case("checkpoint")
def ckpt_malicious_rng_resealed(ctx: Ctx) -> Outcome:
    marker = ctx.marker("rng")

    def tamper(step: Path) -> None:
        torch.save(Planted(marker), step / "rng_rank0.pt")
        _reseal(step)

    return _resumes_previous(ctx, "rng", tamper, "rng_rank0.pt: not an RNG state")


@case("checkpoint")
def ckpt_malicious_metadata_resealed(ctx: Ctx) -> Outcome:
    marker = ctx.marker("metadata_sealed")

    def tamper(step: Path) -> None:
        (step / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
        _reseal(step)

    return _resumes_previous(ctx, "mdsealed", tamper, "refused to load 'builtins.exec'")


@case("checkpoint")
def ckpt_malicious_metadata_no_manifest(ctx: Ctx) -> Outcome:
    marker = ctx.marker("metadata_plain")

    def tamper(step: Path) -> None:
        (step / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
        (step / "manifest.json").unlink(missing_ok=True)

    return _resumes_previous(ctx, "mdplain", tamper, "manifest.json: missing")


def _plant(folder: Path, marker: Path, step: int, sealed: bool) -> None:
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    torch.save(Planted(marker), folder / "rng_rank0.pt")
    (folder / "__0_0.distcp").write_bytes(b"\0" * 4096)
    (folder / "meta.json").write_text(json.dumps({"step": step, "epoch": 0}))
    (folder / "COMPLETE").write_text(f"{step}\n")
    if sealed:
        _reseal(folder)


@case("checkpoint")
def ckpt_planted_in_resume_folder(ctx: Ctx) -> Outcome:
    marker = ctx.marker("resume_folder")
    folder = ctx.path("downloaded")
    _plant(folder / "step_000000005", marker, 5, sealed=True)
    _plant(folder / "step_000000006", marker, 6, sealed=False)
    return expect_error(train(ctx, ctx.path("runs_dl"), "dl", f"trainer.resume_from={folder}"),
                        r"no complete checkpoint there.*refused to load 'builtins.exec'")


@case("checkpoint")
def ckpt_planted_in_own_folder_fresh_run(ctx: Ctx) -> Outcome:
    marker = ctx.marker("own_folder")
    runs = ctx.path("runs_own")
    own = runs / "own" / "checkpoints"
    _plant(own / "step_000000099", marker, 99, sealed=True)
    _plant(own / "step_000000098", marker, 98, sealed=False)
    r = train(ctx, runs, "own", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=1")
    return expect_ok(r, lambda: ((own / "step_000000004" / "manifest.json").exists(), "own step 4 kept, planted ones left unread"))


@case("checkpoint")
def ckpt_planted_then_resume_latest(ctx: Ctx) -> Outcome:
    marker = ctx.marker("latest")
    runs = ctx.path("runs_latest")
    own = runs / "latest" / "checkpoints"
    r = train(ctx, runs, "latest", "trainer.checkpoint_every=2")
    _plant(own / "step_000000099", marker, 99, sealed=True)
    r = train(ctx, runs, "latest", "trainer.checkpoint_every=2", "trainer.resume_from=latest")
    return expect_ok(r, lambda: (f"resumed from {own / 'step_000000004'}" in r.out, "planted step 99 skipped, own step 4 used"))


@case("checkpoint")
def ckpt_old_format_refused(ctx: Ctx) -> Outcome:
    folder, _ = _copy_base(ctx, "old")
    for step in folder.iterdir():
        (step / "manifest.json").unlink(missing_ok=True)  # as an older CompactRec wrote them
    return expect_error(train(ctx, ctx.path("runs_old"), "old", f"trainer.resume_from={folder / 'step_000000004'}"),
                        r"manifest.json: missing; a checkpoint without CompactRec's manifest .* is refused rather than unpickled")


@case("checkpoint")
def ckpt_keep_one_keeps_the_final(ctx: Ctx) -> Outcome:
    runs = ctx.path("runs_keep1")
    r = train(ctx, runs, "keep1", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=1")
    own = runs / "keep1" / "checkpoints"

    def ok():
        names = sorted(p.name for p in own.iterdir()) if own.exists() else []
        return names == ["step_000000004"], f"left: {names}"

    outcome = expect_ok(r, ok)
    return ("lost", outcome[1]) if outcome[0] == "silent" else outcome


@case("checkpoint")
def ckpt_kill_between_replace_renames(ctx: Ctx) -> Outcome:
    """Re-saving a step while the process dies between the two renames (simulated)."""
    from compactrec.trainer import checkpoint as ck

    class Engine:
        def __init__(self, v: float) -> None:
            self.w, self.model = torch.full((8, 8), v), torch.nn.Linear(1, 1)

        def state_dict(self):
            return {"model": {"w": self.w}}

        def load_state_dict(self, s):
            self.w.copy_(s["model"]["w"])

        def save_files(self, f):
            pass

        def load_files(self, f):
            pass

    root = ctx.path("replace")
    ck.save_checkpoint(root, Engine(1.0), ck.TrainState(step=6, epoch=0))
    real = Path.rename

    def dying(self, target):
        if self.name == ".step_000000006.tmp":
            raise KeyboardInterrupt
        return real(self, target)

    Path.rename = dying
    try:
        ck.save_checkpoint(root, Engine(2.0), ck.TrainState(step=6, epoch=0))
    except KeyboardInterrupt:
        pass
    finally:
        Path.rename = real
    found = ck.latest_checkpoint(root)
    if found is None:
        return "lost", "no checkpoint of step 6 left"
    e = Engine(0.0)
    ck.load_checkpoint(found, e)
    return ("recovered", f"the previous step 6 is usable ({found.name})") if float(e.w[0, 0]) == 1.0 else ("silent", "wrong weights")


# ---- resume with other settings ---------------------------------------------------------
def _resume_case(name: str, pattern: str, *overrides: str, data=None):
    def fn(ctx: Ctx) -> Outcome:
        ckpts, _ = ctx.base()
        root = data(ctx) if data else None
        return expect_error(train(ctx, ctx.path(f"runs_{name}"), name, f"trainer.resume_from={ckpts}", *overrides, data=root), pattern)

    return fn


def _other_data(ctx: Ctx) -> Path:
    from tests.conftest import make_data

    root = ctx.work / "data_seed1"
    if not (root / "_manifest.json").exists():
        make_data(root, seed=1)
    return root


CASES += [
    ("resume_other_kind", "resume", _resume_case("kind", r"embedding.kind: checkpoint 'hash', now 'qr'", "embedding.kind=qr"), False),
    ("resume_other_ratio", "resume", _resume_case("ratio", r"compression.ratio: checkpoint 16.0, now 8.0", "compression.ratio=8"), False),
    ("resume_other_dim", "resume", _resume_case("dim", r"model.embedding_dim: checkpoint 32, now 16", "model.embedding_dim=16", "model.dense_arch=[64,16]"), False),
    ("resume_other_hash_seed", "resume", _resume_case("seed", r"embedding.hash.seed: checkpoint 0, now 1", "embedding.hash.seed=1"), False),
    ("resume_other_data_same_layout", "resume", _resume_case("data", r"data.identity: other data", data=_other_data), False),
    ("resume_more_epochs_unasked", "resume", _resume_case("epochs", r"trainer.epochs: checkpoint 1, now 2", "trainer.epochs=2"), False),
    ("resume_other_sparse_optimizer", "resume", _resume_case("sgd", r"optim.sparse: checkpoint 'rowwise_adagrad', now 'sgd'", "optim.sparse=sgd"), False),
]


@case("resume")
def resume_moved_data(ctx: Ctx) -> Outcome:
    ckpts, base = ctx.base()
    moved = ctx.path("data_moved")
    shutil.copytree(ctx.data, moved)
    runs = ctx.path("runs_moved")
    r = train(ctx, runs, "moved", f"trainer.resume_from={ckpts}", data=moved)
    return expect_ok(r, lambda: (metrics(runs, "moved")["weights_digest"] == base["weights_digest"], "same model, data at another path"))


@case("resume")
def resume_more_epochs_allowed(ctx: Ctx) -> Outcome:
    ckpts, _ = ctx.base()
    runs = ctx.path("runs_more")
    r = train(ctx, runs, "more", f"trainer.resume_from={ckpts}", "trainer.epochs=2", "trainer.resume_changes=[trainer.epochs]")
    return expect_ok(r, lambda: (metrics(runs, "more")["steps"] == 8, f"steps {metrics(runs, 'more')['steps']}"))


@case("resume")
def resume_from_missing_folder(ctx: Ctx) -> Outcome:
    return expect_error(train(ctx, ctx.path("runs_nofolder"), "nf", f"trainer.resume_from={ctx.work / 'nowhere'}"),
                        r"trainer.resume_from=.*nowhere: no complete checkpoint there")


# ---- converter ---------------------------------------------------------------------------
def _tsv(path: Path, lines: int, gz: bool, seed: int = 0, bad=None) -> None:
    from tests.unit.test_criteo_convert import write_tsv

    write_tsv(path, lines, seed=seed, gz=gz, bad=bad)


def _convert(*args: str) -> Run:
    return cli("convert", "criteo", *args, "--no-progress", "--workers", "1")


@case("convert")
def convert_truncated_gz(ctx: Ctx) -> Outcome:
    d = ctx.path("conv_trunc")
    _tsv(d / "day_0.gz", 400, gz=True)
    data = (d / "day_0.gz").read_bytes()
    cut = len(data) * 2 // 3
    (d / "day_0.gz").write_bytes(data[:cut])
    return expect_error(_convert(str(d / "day_0.gz"), "--out", str(d / "out")), rf"day_0.gz: truncated .*ends at byte {cut}")


@case("convert")
def convert_corrupt_gz(ctx: Ctx) -> Outcome:
    d = ctx.path("conv_corrupt")
    _tsv(d / "day_0.gz", 400, gz=True)
    raw = bytearray((d / "day_0.gz").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\xff" * 16
    (d / "day_0.gz").write_bytes(bytes(raw))
    return expect_error(_convert(str(d / "day_0.gz"), "--out", str(d / "out")), r"day_0.gz: (corrupt gzip data in compressed bytes \d+|truncated)")


@case("convert")
def convert_malformed_line(ctx: Ctx) -> Outcome:
    d = ctx.path("conv_bad")
    _tsv(d / "day_0", 120, gz=False, bad={90: ("1\t2\t3", "")})
    return expect_error(_convert(str(d / "day_0"), "--out", str(d / "out")), r"day_0:91: 3 field\(s\), expected 40")


@case("convert")
def convert_other_options_refused(ctx: Ctx) -> Outcome:
    d = ctx.path("conv_opts")
    _tsv(d / "day_0", 60, gz=False)
    _convert(str(d / "day_0"), "--out", str(d / "out"))
    return expect_error(_convert(str(d / "day_0"), "--out", str(d / "out"), "--max-ids", "100"), r"holds a conversion with other options")


def _fifo_driver(d: Path):
    """A converter driver whose 2 workers are each half-way into a .gz fed by a named pipe."""
    import psutil

    fifos = [d / "raw" / f"day_{i}.gz" for i in (0, 1)]
    fifos[0].parent.mkdir(parents=True)
    for f in fifos:
        os.mkfifo(f)
    code = "import sys; from compactrec.cli import main; sys.exit(main(sys.argv[1:]))"
    driver = subprocess.Popen([sys.executable, "-c", code, "convert", "criteo", *map(str, fifos), "--out", str(d / "out"),
                               "--workers", "2", "--no-progress"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    ends = []
    for f in fifos:
        end = time.monotonic() + 120
        while True:
            try:
                ends.append(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
                break
            except OSError as e:
                if e.errno != errno.ENXIO or driver.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"no worker opened {f}") from None
                time.sleep(0.05)
    head = gzip.compress(b"x" * 100000)
    for fd in ends:
        os.write(fd, head[: len(head) // 2])
    workers = [p for p in psutil.Process(driver.pid).children(recursive=True)]
    return driver, workers, ends, fifos


def _rerun_matches(d: Path, fifos: List[Path]) -> Tuple[bool, str]:
    from compactrec.data.convert.criteo_convert import ConvertOptions, convert_criteo

    for i, f in enumerate(fifos):
        f.unlink()
        _tsv(f, 120, gz=True, seed=i)
    opts = ConvertOptions(progress=False)
    convert_criteo([str(f) for f in fifos], d / "ref", opts)
    convert_criteo([str(f) for f in fifos], d / "out", opts)
    same = all((d / "out" / p.relative_to(d / "ref")).read_bytes() == p.read_bytes() for p in (d / "ref").glob("train/*.parquet"))
    return same, f"re-run byte-identical: {same}"


@case("convert")
def convert_ctrl_c(ctx: Ctx) -> Outcome:
    import psutil

    d = ctx.path("conv_sigint")
    driver, workers, ends, fifos = _fifo_driver(d)
    try:
        os.killpg(driver.pid, signal.SIGINT)
        _, err = driver.communicate(timeout=120)
        _, alive = psutil.wait_procs(workers, timeout=60)
    finally:
        for fd in ends:
            os.close(fd)
        for p in workers:
            if p.is_running():
                p.kill()
    if "Traceback" in err or driver.returncode != 130 or alive:
        return "crash", f"exit {driver.returncode}, traceback: {'Traceback' in err}, workers alive: {len(alive)}"
    same, detail = _rerun_matches(d, fifos)
    return ("clear" if same else "lost"), f"exit 130, no traceback; {detail}"


@case("convert")
def convert_driver_sigkill(ctx: Ctx) -> Outcome:
    import psutil

    d = ctx.path("conv_sigkill")
    driver, workers, ends, fifos = _fifo_driver(d)
    try:
        driver.kill()
        driver.wait(timeout=60)
        _, alive = psutil.wait_procs(workers, timeout=60)
    finally:
        for fd in ends:
            os.close(fd)
        for p in workers:
            if p.is_running():
                p.kill()
    if alive:
        return "silent", f"{len(alive)} workers kept running after the driver died"
    same, detail = _rerun_matches(d, fifos)
    return ("recovered" if same else "lost"), f"workers died with the driver; {detail}"


# ---- faults: killed workers --------------------------------------------------------------
def _digest_run(ctx: Ctx, runs: Path, name: str, *extra: str) -> Run:
    return sub("train", HASH_CONFIG, *TINY[:4], f"data.path={ctx.data}", f"runs_dir={runs}", f"name={name}",
               "cluster.num_workers=2", "trainer.checkpoint_every=2", "trainer.max_steps=6", *extra)


@case("fault", slow=True)
def fault_ray_worker_killed_recovers_exactly(ctx: Ctx) -> Outcome:
    runs = ctx.path("runs_ray")
    clean = _digest_run(ctx, runs, "clean", "trainer.launcher=local")
    if clean.rc != 0:
        return "crash", "clean run failed: " + clean.err[-200:]
    r = _digest_run(ctx, runs, "faulty", "trainer.launcher=ray", "trainer.fault_at_step=3", "trainer.max_failures=1")
    return expect_ok(r, lambda: (metrics(runs, "faulty")["weights_digest"] == metrics(runs, "clean")["weights_digest"],
                                 "weights bitwise equal to the uninterrupted run"))


@case("fault", slow=True)
def fault_local_worker_killed_recovers_exactly(ctx: Ctx) -> Outcome:
    runs = ctx.path("runs_localfault")
    clean = _digest_run(ctx, runs, "clean", "trainer.launcher=local")
    r = _digest_run(ctx, runs, "faulty", "trainer.launcher=local", "trainer.fault_at_step=3", "trainer.max_failures=1")
    if clean.rc != 0:
        return "crash", "clean run failed"
    return expect_ok(r, lambda: (metrics(runs, "faulty")["weights_digest"] == metrics(runs, "clean")["weights_digest"],
                                 "weights bitwise equal to the uninterrupted run"))


@case("fault", slow=True)
def fault_ray_failure_message(ctx: Ctx) -> Outcome:
    runs = ctx.path("runs_raydies")
    r = _digest_run(ctx, runs, "dies", "trainer.launcher=ray", "trainer.fault_at_step=3", "trainer.max_failures=0")
    return expect_error(r, r"rank 1 on node \S+ \(\S+, pid \d+\) died after step 3")
