"""Who trains the dense part of a sharded model: DDP (the default) or a DeepSpeed engine.

The embedding tables always stay under ``DistributedModelParallel`` with their fused
optimizer, which updates rows inside backward. The *dense part* is every parameter without
an in-backward optimizer: bottom MLP, DCN cross layers, top MLP, and the dense pieces of
compressed embeddings (mixed-dim projections, ...). Two engines train it:

- ``ddp``: DMP wraps the dense part in DDP; one torch optimizer for it, combined with the
  fused one (``trainer/optim.build_optimizer``): the behaviour from before engines existed.
- ``deepspeed``: DMP leaves the dense part unwrapped (``shard_model(..., data_parallel=False)``)
  and a DeepSpeed engine owns the dense sub-modules: ZeRO stage 1 shards the optimizer state
  over ranks, 2 also the gradients, 3 also the parameters; gradient clipping; bf16 autocast
  on GPU. It reuses the process group that Ray Train or the local launcher created.

One step drives both parts, whichever engine runs::

    engine = build_dense_engine(cfg.dense, cfg.optim, model, env)
    loss, (_, logits, labels) = engine.forward(batch)  # model(batch), inside DeepSpeed's forward
    engine.zero_grad(); engine.backward(loss); engine.step()

Checkpoints (``trainer/checkpoint.py``) hold two parts: ``engine.state_dict()`` goes through
``torch.distributed.checkpoint`` (the tables, the fused optimizer state and, with DDP, the
dense weights and optimizer state); ``engine.save_files(folder)`` adds what DCP cannot hold,
DeepSpeed's own checkpoint of the dense part (per-rank ZeRO partitions, ``folder/deepspeed``).

Gradient scale: TorchRec averages table gradients over ranks, DDP averages the dense ones,
and DeepSpeed divides its reduced dense gradients by the data-parallel size too, so both
engines follow one trajectory up to summation order (``tests/distributed/test_deepspeed.py``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set

import torch
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer
from torchrec.optim.optimizers import in_backward_optimizer_filter

from compactrec.sharding.env import DistEnv
from compactrec.trainer.config import DeepSpeedConfig, DenseConfig, OptimConfig
from compactrec.trainer.model import unwrap
from compactrec.trainer.optim import dense_optimizer, build_optimizer

DS_DIR, DS_TAG = "deepspeed", "dense"  # CHECKPOINT/deepspeed/dense/: DeepSpeed's own files
INSTALL_HINT = (
    "dense.engine=deepspeed needs DeepSpeed, which is not installed: "
    "pip install 'compactrec[deepspeed]' (in this repository `make test` installs it from requirements.lock)"
)


class DenseEngine:
    """What the loop calls; the sparse fused optimizer is stepped and saved with the dense part.

    Checkpoint protocol (every rank calls each method; a run resumes with the engine it was
    saved with): ``state_dict()`` is a nested dict of tensors for DCP, which loads into it in
    place and hands it back through ``load_state_dict``; ``save_files`` / ``load_files`` read
    and write the engine's own files in the checkpoint folder. Optimizer hyperparameters are
    not restored: they come from the config.
    """

    name = "?"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def zero_grad(self) -> None:
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        raise NotImplementedError

    def save_files(self, folder: str | Path) -> None:
        """Files beside the DCP part of a checkpoint (none for DDP)."""

    def load_files(self, folder: str | Path) -> None:
        """Read what ``save_files`` wrote."""

    def optimizers(self) -> List[Any]:
        """Every optimizer whose ``param_groups`` hold an lr (dense and the tables' fused one),
        for the lr schedule (``trainer/schedule.py``)."""
        raise NotImplementedError

    def memory_report(self) -> Dict[str, int]:
        """This rank's bytes: ``optimizer_state`` (the dense optimizer's state tensors) and
        ``master_weights`` (copies of the weights that the optimizer updates, ZeRO's fp32
        partitions; 0 when it updates the model's own parameters)."""
        raise NotImplementedError


class DDPEngine(DenseEngine):
    """DMP's DDP wrapper syncs the dense gradients; ``build_optimizer`` steps both parts."""

    name = "ddp"

    def __init__(self, model: nn.Module, optim: OptimConfig) -> None:
        super().__init__(model)
        if getattr(model, "_ddp_wrapped", True) is False:  # a DMP built with data_parallel=False
            raise ValueError("dense.engine=ddp: shard the model with shard_model(..., data_parallel=True)")
        self.optimizer: CombinedOptimizer = build_optimizer(model, optim)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()

    def state_dict(self) -> Dict[str, Any]:
        fused = getattr(self.model, "fused_optimizer", None)
        for _, opt in self.optimizer.optimizers:
            if opt is not fused and len(opt.state) < len(opt.params):
                opt.init_state()  # Adam's state is lazy: without it a load would skip it silently
        self.optimizer.save_param_groups(False)  # tensors only; hyperparameters come from the config
        return {"model": self.model.state_dict(), "optim": self.optimizer.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])

    def optimizers(self) -> List[Any]:
        return [o for _, o in self.optimizer.optimizers]

    def memory_report(self) -> Dict[str, int]:
        fused = getattr(self.model, "fused_optimizer", None)
        dense = [o for _, o in self.optimizer.optimizers if o is not fused]
        return {"optimizer_state": sum(_state_bytes(o) for o in dense), "master_weights": 0}


class _DenseParts(nn.Module):
    """The model's dense sub-modules under one root, for DeepSpeed. They are the same module
    objects, so the model's own forward computes with the parameters DeepSpeed manages.
    ``forward(fn, *args)`` runs ``fn(*args)``: DeepSpeed's forward machinery (ZeRO-3
    gathering, autocast, backward hooks) then wraps the whole model forward."""

    def __init__(self, modules: Dict[str, nn.Module]) -> None:
        super().__init__()
        self.paths: List[str] = list(modules)  # path in the model, e.g. "model.dense_arch"
        for path, module in modules.items():
            self.add_module(path.replace(".", "__"), module)

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def model_keys(self) -> Set[str]:
        """The model ``state_dict`` keys whose tensors DeepSpeed saves."""
        return {f"{p}.{k}" for p in self.paths for k in getattr(self, p.replace(".", "__")).state_dict()}


def dense_modules(root: nn.Module, dense: Set[int]) -> Dict[str, nn.Module]:
    """The largest sub-modules of ``root`` whose parameters are all in ``dense`` (ids), by
    path; together they hold every dense parameter, and no table."""
    found: Dict[str, nn.Module] = {}

    def visit(path: str, module: nn.Module) -> None:
        params = list(module.parameters())
        if params and all(id(p) in dense for p in params):
            found[path] = module
            return
        own = [n for n, p in module.named_parameters(recurse=False) if id(p) in dense]
        if own:
            raise ValueError(
                f"module '{path}' holds dense parameters {own} beside embedding tables; "
                "move them into a sub-module so DeepSpeed can own them"
            )
        for name, child in module.named_children():
            visit(f"{path}.{name}" if path else name, child)

    visit("", root)
    return found


class DeepSpeedEngine(DenseEngine):
    """A DeepSpeed engine for the dense sub-modules; DMP keeps the tables and their fused
    optimizer (stepped and saved here too). Build it after the model's weights are final:
    ZeRO copies them into its flat buffers (resume through ``trainer/checkpoint.py``)."""

    name = "deepspeed"

    def __init__(self, model: nn.Module, cfg: DeepSpeedConfig, optim: OptimConfig, env: DistEnv) -> None:
        super().__init__(model)
        if getattr(model, "_ddp_wrapped", None) is not False:  # not a DMP, or its dense part in DDP
            raise ValueError("dense.engine=deepspeed: shard the model with shard_model(..., data_parallel=False)")
        deepspeed = _import_deepspeed(env)
        dense = dict(in_backward_optimizer_filter(model.named_parameters()))
        self.parts = _DenseParts(dense_modules(unwrap(model), {id(p) for p in dense.values()}))
        covered = {id(p) for p in self.parts.parameters()}
        missed = sorted(k for k, p in dense.items() if id(p) not in covered)
        if missed:
            raise ValueError(f"dense parameters outside the DeepSpeed engine: {missed}")
        self.sparse: Optional[KeyedOptimizer] = getattr(model, "fused_optimizer", None)
        self.ds, *_ = deepspeed.initialize(
            model=self.parts,
            optimizer=dense_optimizer(self.parts.parameters(), optim),  # torch: nothing to compile
            config=deepspeed_config(cfg, env),
            dist_init_required=False,  # reuse the process group of Ray Train / the launcher
        )
        self._dense_keys = self.parts.model_keys()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.ds(self.model, *args, **kwargs)

    def zero_grad(self) -> None:
        self.ds.zero_grad()
        if self.sparse is not None:
            self.sparse.zero_grad()  # fused: nothing to zero; applies a changed lr

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)  # tables update inside it (fused), dense grads reduced by ZeRO

    def step(self) -> None:
        self.ds.step()
        if self.sparse is not None:
            self.sparse.step()

    def optimizers(self) -> List[Any]:
        return [self.ds.optimizer] + ([self.sparse] if self.sparse is not None else [])

    def state_dict(self) -> Dict[str, Any]:
        model = {k: v for k, v in self.model.state_dict().items() if k not in self._dense_keys}
        state: Dict[str, Any] = {"model": model}
        if self.sparse is not None:
            self.sparse.save_param_groups(False)
            state["optim"] = self.sparse.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        result = self.model.load_state_dict(state["model"], strict=False)
        stray = sorted(set(result.missing_keys) - self._dense_keys) + sorted(result.unexpected_keys)
        if stray:
            raise KeyError(f"checkpoint and model disagree on {stray[:5]}")
        if self.sparse is not None:
            self.sparse.load_state_dict(state["optim"])

    def save_files(self, folder: str | Path) -> None:
        self.ds.save_checkpoint(str(Path(folder) / DS_DIR), tag=DS_TAG, save_latest=False)

    def load_files(self, folder: str | Path) -> None:
        where = Path(folder) / DS_DIR
        _check_zero_world_size(where / DS_TAG, self.ds.zero_optimization_stage(), self.ds.dp_world_size)
        opt = getattr(self.ds.optimizer, "optimizer", self.ds.optimizer)
        config = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        if self.ds.zero_optimization_stage() == 3:
            # ZeRO-3 hands its torch optimizer one flat partition per step and clears the
            # list after; a torch Adagrad it re-created keeps the list filled until the first
            # step, and loading then appends a second copy ("parameter group that doesn't
            # match the size"). Clear it as a step would (DeepSpeed 0.19.8).
            for group in opt.param_groups:
                group["params"] = []
        loaded, _ = self.ds.load_checkpoint(str(where), tag=DS_TAG, load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(f"{where}: no DeepSpeed checkpoint with tag '{DS_TAG}'")
        opt = getattr(self.ds.optimizer, "optimizer", self.ds.optimizer)
        for group, hyper in zip(opt.param_groups, config):
            group.update(hyper)  # lr, eps, ...: from the config, like the tables' optimizer

    def memory_report(self) -> Dict[str, int]:
        opt = self.ds.optimizer
        inner = getattr(opt, "optimizer", opt)  # ZeRO wraps a torch optimizer over its partitions
        own = {id(p) for p in self.parts.parameters()}
        masters = [p for p in inner.state if id(p) not in own]  # state is keyed by what it updates
        return {"optimizer_state": _state_bytes(inner), "master_weights": sum(_bytes(p) for p in masters)}


def _check_zero_world_size(tag_dir: Path, stage: int, world_size: int) -> None:
    """ZeRO files hold one partition per rank and do not reshard: say so instead of failing
    inside DeepSpeed (converting with DeepSpeed's universal checkpoint is not wired here)."""
    if stage == 0 or not tag_dir.is_dir():
        return
    saved = len(list(tag_dir.glob("zero_pp_rank_*_mp_rank_*_optim_states.pt")))
    if saved and saved != world_size:
        raise ValueError(
            f"{tag_dir}: DeepSpeed ZeRO-{stage} state saved on {saved} ranks cannot resume on "
            f"{world_size}; resume with {saved} ranks (the tables alone would reshard)"
        )


def deepspeed_config(cfg: DeepSpeedConfig, env: DistEnv) -> Dict[str, Any]:
    """DeepSpeed's JSON config from ``dense.deepspeed`` (``extra`` merged last)."""
    if cfg.bf16 and env.device.type != "cuda":
        raise ValueError("dense.deepspeed.bf16=true needs a GPU (trainer.device cuda); on CPU leave it false")
    ds: Dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,  # read only by DeepSpeed's own sample counter
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(cfg.gradient_clipping),
        "zero_optimization": {
            "stage": int(cfg.zero_stage),
            # DeepSpeed's 5e8-element defaults suit LLMs; a DLRM's dense part is ~1e7 parameters
            "reduce_bucket_size": 50_000_000,
            "allgather_bucket_size": 50_000_000,
        },
        "zero_allow_untested_optimizer": True,  # torch Adagrad / SGD under ZeRO
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.bf16:  # autocast, not DeepSpeed's "bf16": the tables hand fp32 activations to the MLPs
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return _merge(ds, dict(cfg.extra))


def build_dense_engine(cfg: DenseConfig, optim: OptimConfig, model: nn.Module, env: DistEnv) -> DenseEngine:
    """The engine named by ``cfg.engine`` for ``model`` (a DMP from ``shard_model``, with
    ``data_parallel=(cfg.engine == "ddp")``)."""
    if cfg.engine == "ddp":
        return DDPEngine(model, optim)
    if cfg.engine == "deepspeed":
        return DeepSpeedEngine(model, cfg.deepspeed, optim, env)
    raise ValueError(f"dense.engine is {cfg.engine!r}; expected 'ddp' or 'deepspeed'")


def check_dense_engine(cfg: DenseConfig) -> None:
    """Fail early (before data and model are built) when the engine's package is missing."""
    import importlib.util

    if cfg.engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ImportError(INSTALL_HINT)


def _import_deepspeed(env: DistEnv) -> Any:
    # DeepSpeed picks its accelerator once, at import: make it the rank's device type.
    os.environ.setdefault("DS_ACCELERATOR", env.device.type)
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))  # DeepSpeed asserts it is set
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
    except ModuleNotFoundError as e:
        if e.name != "deepspeed":  # installed but broken (a dependency of its own is missing)
            raise
        raise ImportError(INSTALL_HINT) from e
    if not os.environ.get("COMPACTREC_VERBOSE"):
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if get_accelerator().device_name() != env.device.type:
        raise RuntimeError(
            f"DeepSpeed runs on '{get_accelerator().device_name()}' but this rank trains on "
            f"'{env.device.type}': set DS_ACCELERATOR={env.device.type} before deepspeed is imported"
        )
    if env.device.type == "cpu":
        _skip_shm_comm_build(deepspeed)
    return deepspeed


def _skip_shm_comm_build(deepspeed: Any) -> None:
    """DeepSpeed compiles a shared-memory all-reduce op (g++, ~25 s) when it first wraps the
    process group on CPU. Only DeepSpeed-inference's all-reduce uses it; training collectives
    go through torch.distributed (gloo). Marking it unavailable skips the build."""
    try:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    except Exception:  # a DeepSpeed without the table: it builds, slower but correct
        pass


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(_bytes(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))
