"""2 gloo ranks: DMP embeddings + a DeepSpeed engine for the dense part (DCNv2) train like
DMP + DDP on the same batches, every parameter moves, and a save / resume continues the
same trajectory.

All runs start from the same full weights (a reference model's state copied into each
sharded model) and see the same batches: today's loop (``build_optimizer``; zero_grad,
backward, step), the DDP engine, and the DeepSpeed engine with ZeRO-2 and with ZeRO-3
(every dense parameter partitioned). The DDP engine must equal today's loop exactly. ZeRO
reduce-scatters the dense gradients where DDP all-reduces them: the same mean, possibly in
another summation order, so losses must agree to float32 rounding carried through 5
Adagrad steps: rtol 1e-5, atol 1e-6 (on 2 ranks they came out identical: a + b has one
order). After step 3 every engine is checkpointed (``trainer/checkpoint.py``: DCP for the
tables, DeepSpeed's own files for its dense part); a model built with another seed loads
that and must repeat steps 4 and 5 bit for bit."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

from compactrec.sharding.env import DistEnv, all_gather_object, spawn
from tests.helpers import slice_batch

STEPS = 5
SAVE_AFTER = 3  # steps before the checkpoint; the resumed run repeats steps 4 and 5
LOCAL_B = 64
ENGINES = {  # name -> the dense.* overrides of each run
    "ddp": ["dense.engine=ddp"],
    "zero-2": ["dense.engine=deepspeed", "dense.deepspeed.zero_stage=2"],
    "zero-3": ["dense.engine=deepspeed", "dense.deepspeed.zero_stage=3"],
}


def _step(engine, batch) -> float:
    """One training step through the engine interface; the mean loss over ranks."""
    loss, _ = engine.forward(batch)
    engine.zero_grad()
    engine.backward(loss)
    engine.step()
    return _mean(float(loss.detach()))


def _snapshot(engine) -> dict:
    """Every state tensor this rank holds; a ZeRO-3 parameter by its local partition."""
    from compactrec.sharding.state import local_shards

    out = local_shards(engine.model)
    for path in getattr(getattr(engine, "parts", None), "paths", []):
        for name, p in engine.model.module.get_submodule(path).named_parameters():
            if hasattr(p, "ds_tensor"):
                out[f"{path}.{name}"] = p.ds_tensor.detach().clone()
    return out


def _mean(x: float) -> float:
    xs = all_gather_object(x)
    return sum(xs) / len(xs)


def _ranks(rank: int, world: int, data: str, out: str) -> None:
    from compactrec.sharding.shard import shard_model
    from compactrec.sharding.state import load_full_state_dict
    from compactrec.trainer.checkpoint import TrainState, load_checkpoint, save_checkpoint
    from compactrec.trainer.config import load_config
    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.trainer.dense_engine import build_dense_engine
    from compactrec.trainer.loop import build_train_model
    from compactrec.trainer.optim import build_optimizer

    torch.set_num_threads(1)
    base = [f"data.path={data}", "model.arch=dcn", "optim.sparse_lr=0.1", "optim.dense_lr=0.01",
            # ZeRO-3 keeps parameters below this size whole; 0 partitions every one
            "dense.deepspeed.extra.zero_optimization.stage3_param_persistence_threshold=0"]
    dense = {name: load_config(None, base + over).dense for name, over in ENGINES.items()}
    cfg = load_config(None, base)
    manifest = read_manifest(data)
    env = DistEnv(rank, world, rank, torch.device("cpu"))
    full = build_train_model(cfg, manifest).state_dict()
    other_seed = load_config(None, base + ["trainer.seed=1"])  # other weights until a load

    def engine(name: str, seed_cfg=cfg):
        dmp = shard_model(build_train_model(seed_cfg, manifest), cfg.sharding.types, {}, env,
                          data_parallel=dense[name].engine == "ddp")
        if seed_cfg is cfg:
            load_full_state_dict(dmp, full)
        return build_dense_engine(dense[name], cfg.optim, dmp, env)

    today = shard_model(build_train_model(cfg, manifest), cfg.sharding.types, {}, env)
    load_full_state_dict(today, full)
    today_opt = build_optimizer(today, cfg.optim)
    engines = {name: engine(name) for name in ENGINES}
    before = {name: _snapshot(e) for name, e in engines.items()}

    reader = ParquetReader(manifest.split_files(data, "train"), manifest.schema, LOCAL_B * world, shuffle=False)
    batches = iter(reader.epoch(0))
    local = [slice_batch(next(batches), rank * LOCAL_B, (rank + 1) * LOCAL_B) for _ in range(STEPS)]
    losses = {k: [] for k in ["today", *ENGINES, *(f"{n} resumed" for n in ENGINES)]}
    ckpt, saved = Path(out).parent / "ckpt", {}
    for i, batch in enumerate(local):
        loss, _ = today(batch)
        today_opt.zero_grad()
        loss.backward()
        today_opt.step()
        losses["today"].append(_mean(float(loss.detach())))
        for name, e in engines.items():
            losses[name].append(_step(e, batch))
            if i + 1 == SAVE_AFTER:
                saved[name] = save_checkpoint(ckpt / name, e, TrainState(step=i + 1, epoch=0, world_size=world))
    moved = {}
    for name, e in engines.items():
        after = _snapshot(e)
        changed = all_gather_object({k: bool((after[k] != v).any()) for k, v in before[name].items() if v.numel()})
        moved[name] = {k: any(c.get(k, False) for c in changed) for k in before[name]}

    for name in ENGINES:
        resumed = engine(name, other_seed)
        load_checkpoint(saved[name], resumed)
        for batch in local[SAVE_AFTER:]:
            losses[f"{name} resumed"].append(_step(resumed, batch))
    if rank == 0:
        memory = {name: e.memory_report() for name, e in engines.items()}
        torch.save({"losses": losses, "moved": moved, "memory": memory}, out)


@pytest.mark.distributed
def test_deepspeed_dense_matches_ddp_and_resumes(tiny_data: Path, tmp_path: Path):
    out = tmp_path / "result.pt"
    spawn(_ranks, 2, str(tiny_data), str(out))
    r = torch.load(out, weights_only=False)
    losses = {k: torch.tensor(v, dtype=torch.float64) for k, v in r["losses"].items()}
    assert torch.equal(losses["ddp"], losses["today"]), "the DDP engine must be today's loop exactly"
    for name in ENGINES:
        if name != "ddp":
            torch.testing.assert_close(losses[name], losses["ddp"], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
        resumed = losses[f"{name} resumed"]
        torch.testing.assert_close(resumed, losses[name][SAVE_AFTER:], rtol=0, atol=0, msg=lambda m: f"{name} resumed: {m}")
        frozen = [k for k, m in r["moved"][name].items() if not m]
        assert not frozen, f"{name}: parameters that did not change after {STEPS} steps: {frozen}"
        assert any("sparse_arch" in k for k in r["moved"][name]) and any("crossnet" in k for k in r["moved"][name])
    # ZeRO keeps half the dense optimizer state per rank (plus an fp32 master partition)
    full_state = r["memory"]["ddp"]["optimizer_state"]
    for name in ("zero-2", "zero-3"):
        assert abs(r["memory"][name]["optimizer_state"] - full_state / 2) < 0.01 * full_state, name
        assert r["memory"][name]["master_weights"] > 0


def test_missing_deepspeed_names_the_install_command(monkeypatch: pytest.MonkeyPatch):
    from compactrec.trainer.dense_engine import _import_deepspeed

    real_import = builtins.__import__

    def no_deepspeed(name, *args, **kwargs):
        if name == "deepspeed" or name.startswith("deepspeed."):
            raise ModuleNotFoundError("No module named 'deepspeed'", name="deepspeed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # _import_deepspeed sets both when unset
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(builtins, "__import__", no_deepspeed)
    with pytest.raises(ImportError, match=r"pip install 'compactrec\[deepspeed\]'.*make test"):
        _import_deepspeed(DistEnv(0, 1, 0, torch.device("cpu")))


def test_zero_checkpoint_on_other_world_size_is_refused(tmp_path: Path):
    from compactrec.trainer.dense_engine import _check_zero_world_size

    for r in range(2):
        (tmp_path / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").touch()
    _check_zero_world_size(tmp_path, stage=2, world_size=2)
    _check_zero_world_size(tmp_path, stage=0, world_size=1)  # no ZeRO partitions: nothing to check
    with pytest.raises(ValueError, match="saved on 2 ranks cannot resume on 1"):
        _check_zero_world_size(tmp_path, stage=2, world_size=1)
