"""2 gloo ranks (every sharding type) and 3 and 4 ranks (row-wise, one process group per
world size), on data whose every feature is multi-hot: for every embedding method the
DMP-sharded model trains exactly like the unsharded one (loss at each of three optimizer
steps, then eval outputs), and every parameter changes.

The reference runs the global batch (world x local) on one process; each rank runs its part.
TorchRec (like DDP) averages gradients over ranks, so the mean of the ranks' losses is the
reference's loss. Tolerances: losses rtol 1e-5; outputs atol 1e-5 (float32; FBGEMM's fused
rowwise Adagrad and TorchRec's torch RowWiseAdagrad sum in different orders).
fp16 tables (``embedding.precision=fp16``): FBGEMM reads fp16 rows, pools in fp32, keeps its
optimizer state in fp32 and rounds each updated row to fp16 once. The reference does the same
arithmetic: the same fp16 build, its tables cast to fp32 (exact), and every table rounded to
fp16 after each step (torch's optimizers on fp16 parameters would compute in fp16: NaN at
eps=1e-8). Tolerances: losses rtol 5e-6, outputs atol 2e-5 (CAFE 5e-4); without the rounding
the reference is off by 2e-5 to 6e-5 in the loss and 8e-5 to 7e-3 in the outputs. The
shards must hold fp16 weights and an fp32 optimizer state of the size the accounting
reports (``sparse_optimizer_state_bytes``).
CAFE: the sketch is sharded over the ranks (sharding/cafe.py) and must give the same hot
ids as the single-process sketch while no shard runs out of hot slots (each shard hands out
only its own): threshold 3 promotes the frequent ids at step 2-3, with count importance and
with the default grad_norm. Then the trained one-process state is loaded into a fresh
sharded model (a resume on another partition): hot ids must be re-homed (> 0), the hot set
must stay the one process's, and the outputs its outputs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from compactrec.sharding.env import DistEnv, all_gather_object, spawn
from tests.helpers import slice_batch

STEPS = 3
LOCAL_B = 64
# case -> (embedding.kind, overrides). CAFE runs twice: with count importance, and with the
# default grad_norm, whose normalisation by the GLOBAL mean over all ranks' occurrences is
# what makes the shards agree with one process (a rank-local mean changes the scores).
CASES = {
    "full": ("full", []),
    "hash": ("hash", ["compression.ratio=8"]),
    "qr": ("qr", ["compression.ratio=8"]),
    "memcom": ("memcom", ["compression.ratio=8"]),
    "mixed_dim": ("mixed_dim", ["compression.ratio=4"]),
    "cafe": ("cafe", ["compression.ratio=5.5", "embedding.cafe.threshold=3", "embedding.cafe.importance=count"]),  # 1090 hot rows: uneven over 3 ranks
    "cafe_grad_norm": ("cafe", ["compression.ratio=5", "embedding.cafe.threshold=3", "embedding.cafe.importance=grad_norm"]),
    # two steps' importance per sketch update: the sharded exchanges and migration run at step 3 only
    "cafe_update2": ("cafe", ["compression.ratio=5", "embedding.cafe.threshold=3", "embedding.cafe.update_every=2"]),
    # two hash levels: a promoted id's hot row starts as the SUM of its two hash rows
    "cafe_levels2": ("cafe", ["compression.ratio=5", "embedding.cafe.threshold=3", "embedding.cafe.levels=2"]),
    "robe": ("robe", ["compression.ratio=8"]),  # Z = 8: pooled lookups per (feature, chunk)
    "robe_z1": ("robe", ["compression.ratio=8", "embedding.robe.block=1"]),  # packed rows of 4: unpooled + scale_pool
    "robe_groups": ("robe", ["compression.ratio=8", "embedding.robe.group_by=feature"]),  # one array per feature
}
FP16 = {f"{case}_fp16": (kind, [*o, "embedding.precision=fp16"])
        for case, (kind, o) in CASES.items() if case in ("full", "hash", "qr", "memcom", "mixed_dim", "cafe", "robe")}
CASES.update(FP16)
FP16_RUNS = [(case, t) for case in FP16 for t in ("row_wise", "table_wise")]  # fp16 on 2 ranks
# The compactrec.kernels ops each method's sharded training step must run (counted at the
# dispatch point): the composition over TorchRec's looked-up rows, and the id hashing.
KERNEL_OPS = {
    "full": set(),
    "hash": {"hash_remap"},
    "qr": {"qr_compose_pool"},
    "memcom": {"hash_remap", "scale_pool"},
    "mixed_dim": {"project_sum"},
    "cafe": {"hash_remap", "project_sum"},
    "robe": {"robe_rows"},
}
EBC_TYPES = ["table_wise", "row_wise", "column_wise", "table_row_wise"]
EC_TYPES = ["table_wise", "row_wise", "column_wise"]  # unpooled collections: no table_row_wise
TYPES = {"full": EBC_TYPES, "hash": EBC_TYPES, "qr": EC_TYPES, "memcom": EC_TYPES, "mixed_dim": EC_TYPES,
         "cafe": EBC_TYPES, "cafe_grad_norm": ["table_wise"], "cafe_update2": ["row_wise"], "robe": EBC_TYPES,
         "robe_z1": EC_TYPES, "robe_groups": ["row_wise", "table_wise"]}  # row-wise: at 3 and 4 ranks


def _ranks(rank: int, world: int, data: str | dict, runs: list, out: str) -> None:
    """One process group for several (case, sharding) runs (start-up is the slow part), or
    (data key, case, sharding) runs with ``data`` a dict of data paths."""
    results = {}
    for run in runs:
        path, (case, sharding) = (data, run) if len(run) == 2 else (data[run[0]], run[1:])
        try:
            results[run] = _one(rank, world, path, case, sharding)
        except Exception as e:  # one process group runs many cases: name the one that broke
            raise RuntimeError(f"rank {rank}: case {case}, {sharding}, on {path}: {e}") from e
    if rank == 0:
        torch.save(results, out)


def _per_table(method: str, sharding: str) -> dict:
    """CAFE's hot table goes row-wise unless named: ask for table-wise to test that layout too."""
    return {"cafe_hot": ["table_wise"]} if method == "cafe" and sharding == "table_wise" else {}


def _one(rank: int, world: int, data: str, case: str, sharding: str):
    from compactrec.embeddings.base import tables_on
    from compactrec.sharding.shard import shard_model
    from compactrec.sharding.state import load_full_state_dict, local_shards
    from compactrec.trainer.config import load_config
    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.trainer.loop import build_train_model
    from compactrec.trainer.optim import build_optimizer

    torch.set_num_threads(1)
    method, overrides = CASES[case]
    cfg = load_config(None, [f"data.path={data}", "optim.sparse_lr=0.1", "optim.dense_lr=0.05",
                             f"embedding.kind={method}", *overrides])
    manifest = read_manifest(data)
    env = DistEnv(rank, world, rank, torch.device("cpu"))

    ref = build_train_model(cfg, manifest)
    fp16 = case in FP16
    if fp16:
        ref = _fp32_math(ref, cfg)
    ref_opt = build_optimizer(ref, cfg.optim)
    with tables_on("meta"):  # as the training loop builds it: DMP materialises the shards
        sharded = build_train_model(cfg, manifest, env.device)
    dmp = shard_model(sharded, [sharding], _per_table(method, sharding), env)
    load_full_state_dict(dmp, ref.state_dict())
    opt = build_optimizer(dmp, cfg.optim)
    before = local_shards(dmp)

    reader = ParquetReader(manifest.split_files(data, "train"), manifest.schema, LOCAL_B * world)
    batches = iter(reader.epoch(0))
    from compactrec.kernels import calls

    ref_losses, losses = [], []
    kernel_calls: Counter = Counter()  # ops of compactrec.kernels run by the DMP steps alone
    from compactrec.embeddings.precision import sparse_optimizer_state_bytes

    state_bytes = sum(all_gather_object(_fused_state_bytes(dmp)))
    reported_state = sparse_optimizer_state_bytes(ref, cfg.optim.sparse)
    for _ in range(STEPS):
        batch = next(batches)
        loss, _ = ref(batch)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        if fp16:
            _round_tables(ref)
        ref_losses.append(float(loss))
        before_step = Counter(calls())
        loss, _ = dmp(slice_batch(batch, rank * LOCAL_B, (rank + 1) * LOCAL_B))
        opt.zero_grad()
        loss.backward()
        opt.step()
        kernel_calls.update({op: n for (op, _backend), n in (Counter(calls()) - before_step).items()})
        losses.append(sum(all_gather_object(float(loss))) / world)

    batch = next(batches)
    from compactrec.sharding.seen_sync import sync_seen

    sync_seen(dmp)  # reserve_unseen: as the train loop does before an eval, every rank's trained ids
    ref.eval()
    dmp.eval()
    with torch.no_grad():
        _, (_, ref_logits, _) = ref(batch)
        _, (_, logits, _) = dmp(slice_batch(batch, rank * LOCAL_B, (rank + 1) * LOCAL_B))
    logits = torch.cat(all_gather_object(logits))
    after = local_shards(dmp)
    table_dtypes = {str(v.dtype) for k, v in after.items()
                    if v.numel() and v.is_floating_point() and (".embedding_bags." in k or ".embeddings." in k)}
    # trainable state: floating tensors (ids maps and the sketch are integer buffers / not trained)
    changed = {k: bool((after[k] != before[k]).any()) for k in before
               if after[k].numel() and after[k].is_floating_point() and ".sketch." not in k}
    gathered = all_gather_object(changed)
    cafe = None
    if method == "cafe":
        emb = ref.model.sparse_arch.embedding_bag_collection
        emb.flush()
        demb = dmp.module.model.sparse_arch.embedding_bag_collection
        demb.flush()
        dist_hot = set().union(*all_gather_object(set(demb.sketch.hot_keys()[0].tolist())))
        cafe = {"ref_hot": set(emb.sketch.hot_keys()[0].tolist()), "dist_hot": dist_hot,
                "slot_ranges": demb.router.slot_ranges, "bucket_ranges": demb.router.bucket_ranges,
                "hot_rows": demb.plan.hot_rows, "buckets": demb.plan.buckets,
                "reshard": _reshard_from_one_process(ref, batch, cfg, manifest, env, sharding, rank, world)}
    anywhere = {k: any(g.get(k, False) for g in gathered) for k in set().union(*gathered)}
    return {"ref": ref_losses, "dmp": losses, "changed": anywhere, "ref_logits": ref_logits,
            "logits": logits, "cafe": cafe, "kernels": dict(kernel_calls), "table_dtypes": table_dtypes,
            "state_bytes": state_bytes, "reported_state_bytes": reported_state}


def _fp32_math(ref, cfg):
    """The fp16 build with its tables in fp32 (values exact), the sparse optimizer attached anew."""
    from compactrec.embeddings.precision import set_table_precision
    from compactrec.trainer.optim import apply_sparse_optimizer

    set_table_precision(ref, "fp32")  # new Parameters: the in-backward optimizer goes on them
    apply_sparse_optimizer(ref, cfg.optim)
    return ref


def _round_tables(ref) -> None:
    """Each table's rows rounded to fp16, as FBGEMM stores an updated fp16 row."""
    from compactrec.embeddings.precision import collections

    with torch.no_grad():
        for _, _, tables in collections(ref):
            for t in tables.values():
                t.weight.copy_(t.weight.half().float())


def _fused_state_bytes(dmp) -> int:
    """Bytes of this rank's part of the fused (FBGEMM) optimizer state, which must be fp32."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    total = 0
    for per_param in dmp.fused_optimizer.state_dict()["state"].values():
        for t in per_param.values():
            parts = [s.tensor for s in t.local_shards()] if isinstance(t, ShardedTensor) else [t]
            for p in parts:
                assert p.dtype == torch.float32, f"optimizer state in {p.dtype}"
                total += p.numel() * p.element_size()
    return total


def _reshard_from_one_process(ref, batch, cfg, manifest, env, sharding: str, rank: int, world: int) -> dict:
    """Load the trained one-process CAFE (tables and sketch) into a fresh sharded model, as a
    resume on another partition does: the one process handed out slots from 0 up, so most hot
    ids now sit in slots of another rank than their bucket's owner and must be re-homed."""
    from compactrec.embeddings.base import tables_on
    from compactrec.sharding.cafe import after_load
    from compactrec.sharding.shard import shard_model
    from compactrec.sharding.state import load_full_state_dict
    from compactrec.trainer.loop import build_train_model

    with tables_on("meta"):
        model = build_train_model(cfg, manifest, env.device)
    dmp = shard_model(model, [sharding], _per_table("cafe", sharding), env)
    load_full_state_dict(dmp, ref.state_dict())  # tables (hot rows at the one process's slots), dense part
    emb = ref.model.sparse_arch.embedding_bag_collection
    sketch = {k: v for k, v in emb.state_dict().items()  # free lists: rebuilt from the owners on load
              if k.startswith("sketch.") and k not in ("sketch.free", "sketch.free_count")}
    demb = dmp.module.model.sparse_arch.embedding_bag_collection
    demb.load_state_dict(sketch, strict=False)  # the load hook keeps this rank's buckets, marks foreign slots
    rehomed = sum(all_gather_object(after_load(dmp)))
    dmp.eval()
    with torch.no_grad():
        _, (_, logits, _) = dmp(slice_batch(batch, rank * LOCAL_B, (rank + 1) * LOCAL_B))
    hot = set().union(*all_gather_object(set(demb.sketch.hot_keys()[0].tolist())))
    return {"rehomed": rehomed, "hot": hot, "logits": torch.cat(all_gather_object(logits))}


def _check(results: dict, world: int, kernel_ops: dict = KERNEL_OPS) -> None:
    """Every (case, sharding) run: losses, outputs, kernels, moved parameters, CAFE's hot set."""
    for (case, sharding), result in results.items():
        method = CASES[case][0]
        where = f"{case} sharded {sharding} on {world} ranks"
        fp16 = case in FP16
        loss_tol, out_tol = ((1e-5, 1e-6), (1e-4, 1e-5)) if not fp16 else \
            ((5e-6, 1e-6), (1e-4, 5e-4 if method == "cafe" else 2e-5))
        torch.testing.assert_close(torch.tensor(result["dmp"]), torch.tensor(result["ref"]), rtol=loss_tol[0],
                                   atol=loss_tol[1], msg=lambda m: f"{where}: losses differ: {m}")
        torch.testing.assert_close(result["logits"], result["ref_logits"], rtol=out_tol[0], atol=out_tol[1],
                                   msg=lambda m: f"{where}: outputs differ: {m}")
        assert result["table_dtypes"] == {"torch.float16" if fp16 else "torch.float32"}, \
            f"{where}: shards hold {result['table_dtypes']}"
        assert result["state_bytes"] == result["reported_state_bytes"] > 0, \
            f"{where}: FBGEMM's optimizer state {result['state_bytes']} B, accounting says {result['reported_state_bytes']}"
        ran = {op for op, n in result["kernels"].items() if n > 0}
        assert kernel_ops[method] <= ran, f"{where}: the DMP step ran kernels {ran}, expected {kernel_ops[method]}"
        frozen = [k for k, moved in result["changed"].items() if not moved]
        assert not frozen, f"{where}: parameters that did not change after {STEPS} steps: {frozen}"
        tables = [k for k in result["changed"] if k.endswith(".weight") and "sparse_arch" in k]
        assert tables, f"{where}: no embedding tables found"
        if method == "cafe":
            cafe = result["cafe"]
            assert cafe["ref_hot"] and cafe["ref_hot"] == cafe["dist_hot"], f"{where}: hot ids differ from one process's"
            re = cafe["reshard"]
            if sum(hi > lo for lo, hi in cafe["slot_ranges"]) > 1:  # table-wise: one owner, nothing moves
                assert re["rehomed"] > 0, f"{where}: loading one process's sketch re-homed no hot id"
            assert re["hot"] == cafe["ref_hot"], f"{where}: after the reshard the hot ids differ from one process's"
            torch.testing.assert_close(re["logits"], result["ref_logits"], rtol=out_tol[0], atol=out_tol[1],
                                       msg=lambda m: f"{where}: outputs after the reshard differ: {m}")


def _two_rank_runs(item: pytest.Item) -> list:
    """The (data key, case, sharding) runs on 2 ranks that a test of this module checks."""
    name = getattr(item, "originalname", item.name)
    if name == "test_fp16_tables_shard_like_unsharded":
        return [("all", *run) for run in FP16_RUNS]
    if name == "test_sharded_matches_unsharded_and_every_parameter_moves":
        case = item.callspec.params["case"]
        return [("all", case, t) for t in TYPES[case]]
    if name == "test_one_hot_fast_path_sharded":
        return [("one_hot", *run) for run in ONE_HOT_RUNS]
    return []


@pytest.fixture(scope="module")
def two_ranks(request, all_multihot_data: Path, tiny_multihot_data: Path, tmp_path_factory) -> dict:
    """Every 2-rank run that the SELECTED tests of this module check, in one process group:
    starting one (2 processes importing TorchRec) cost about as much as a case's runs, so
    one per test spent ~9 s each. {(data key, case, sharding): rank 0's result}."""
    runs = [r for item in request.session.items if item.module is request.module for r in _two_rank_runs(item)]
    data = {"all": str(all_multihot_data), "one_hot": str(tiny_multihot_data)}
    out = tmp_path_factory.mktemp("two_ranks") / "result.pt"
    spawn(_ranks, 2, data, runs, str(out))
    results = torch.load(out, weights_only=False)
    assert list(results) == runs
    return results


def _of(results: dict, data: str, cases) -> dict:
    """{(case, sharding): result} of ``data``'s runs of ``cases``, in run order."""
    return {(c, t): r for (d, c, t), r in results.items() if d == data and c in cases}


@pytest.mark.distributed
def test_fp16_tables_shard_like_unsharded(two_ranks: dict):
    """``embedding.precision=fp16``: every method on 2 ranks, row-wise and table-wise, against
    the unsharded fp16 model; fp16 shards, fp32 optimizer state of the reported size."""
    results = _of(two_ranks, "all", FP16)
    assert list(results) == FP16_RUNS
    _check(results, 2)


@pytest.mark.distributed
@pytest.mark.parametrize("case", list(TYPES))
def test_sharded_matches_unsharded_and_every_parameter_moves(two_ranks: dict, case):
    """2 ranks, every sharding type that applies."""
    results = _of(two_ranks, "all", [case])
    assert [t for _, t in results] == TYPES[case]
    _check(results, 2)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [3, 4])
def test_every_method_row_wise_on_3_and_4_ranks(all_multihot_data: Path, tmp_path: Path, world: int):
    """One process group per world size, every case row-wise: at 3 ranks the row ranges of
    TorchRec's row-wise split are uneven, and CAFE's buckets follow its hot slots."""
    out = tmp_path / "result.pt"
    fp32 = [case for case in CASES if case not in FP16]
    spawn(_ranks, world, str(all_multihot_data), [(case, "row_wise") for case in fp32], str(out))
    results = torch.load(out, weights_only=False)
    assert sorted(c for c, _ in results) == sorted(fp32)
    _check(results, world)
    cafe = results[("cafe", "row_wise")]["cafe"]
    slots, buckets = cafe["slot_ranges"], cafe["bucket_ranges"]
    for ranges, total in ((slots, cafe["hot_rows"]), (buckets, cafe["buckets"])):
        assert ranges[0][0] == 0 and ranges[-1][1] == total and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in slots]
    assert all(s > 0 for s in sizes), f"a rank without hot slots: {slots}"
    if world == 3:
        assert len(set(sizes)) > 1, f"hot rows {cafe['hot_rows']} split evenly over 3 ranks: the uneven case is not tested"
    for (lo, hi), (b0, b1) in zip(slots, buckets):  # buckets in proportion to slots, to one bucket
        assert abs((b1 - b0) - (hi - lo) * cafe["buckets"] / cafe["hot_rows"]) <= 1


@pytest.mark.distributed
def test_cafe_on_one_rank(all_multihot_data: Path, tmp_path: Path):
    """DMP over ONE rank: the sketch skips its exchanges and reductions (sharding/cafe.py,
    ``world == 1``: no exchanges or reductions, promoted rows read straight from the local
    hash tables) and must still train, promote and migrate exactly as one process."""
    out = tmp_path / "result.pt"
    runs = [("cafe", "row_wise"), ("cafe_grad_norm", "table_wise"), ("cafe_update2", "row_wise"),
            ("cafe_levels2", "table_wise")]
    spawn(_ranks, 1, str(all_multihot_data), runs, str(out))
    results = torch.load(out, weights_only=False)
    assert list(results) == runs
    _check(results, 1)


# One-hot compressed features compose after pooling (no compose-before-pool kernel runs).
ONE_HOT_KERNELS = {"qr": set(), "memcom": {"hash_remap"}, "mixed_dim": {"project_sum"}}
ONE_HOT_RUNS = [(case, t) for case in ONE_HOT_KERNELS for t in EBC_TYPES]


@pytest.mark.distributed
def test_one_hot_fast_path_sharded(two_ranks: dict):
    """``tiny_multihot_data``'s compressed (large) features are one-hot, its small ones
    multi-hot: QR, MEmCom and mixed-dim keep the compressed tables in the pooled EBC with the
    small ones (the one-hot fast path), so every EBC sharding type applies, table_row_wise too."""
    results = _of(two_ranks, "one_hot", ONE_HOT_KERNELS)
    assert list(results) == ONE_HOT_RUNS
    _check(results, 2, ONE_HOT_KERNELS)
