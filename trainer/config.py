"""Typed run configuration: dataclass schema + YAML files + dotted ``key=value`` overrides.

Every section is a small dataclass that the component it configures takes on its own
(``build_embeddings(cfg.embedding, ...)``), so no component sees the whole job. A YAML
file states only what differs from the defaults below; the defaults ARE the embedded demo.

Example::

    cfg = load_config("configs/demo.yaml", ["embedding.kind=full", "trainer.max_steps=10"])
    cfg.data.batch_size  # 512
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from compactrec.trainer.config_checks import Sources, check_knobs, flat_keys


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and the key."""


@dataclass
class SynthConfig:
    """Synthetic Criteo-shaped data with a planted teacher (see ``data/datasets/synthetic.py``)."""

    rows_train: int = 160_000
    rows_eval: int = 40_000
    shards_train: int = 4
    shards_eval: int = 2
    row_group_size: int = 20_000
    cardinalities: str = "criteo_tb_40m"  # criteo_tb_40m | criteo_kaggle
    scale: float = 1e-3  # N_f -> max(min(N_f, min_cardinality), round(N_f * scale))
    min_cardinality: int = 16
    zipf_min: float = 1.05  # per-feature Zipf exponent drawn uniformly in [zipf_min, zipf_max]
    zipf_max: float = 1.3
    latent_dim: int = 8  # teacher's per-id latent vectors
    id_effect: float = 0.8  # std of the summed per-id latent signal
    dense_effect: float = 0.5
    bias: float = -1.2  # teacher intercept: sets the base click rate
    multi_hot_features: int = 0  # the last K categorical features become list<int64> bags
    multi_hot_max_len: int = 4
    seed: int = 0


@dataclass
class DataConfig:
    """Where the Parquet shards are and how ranks read them."""

    path: str = "datasets/demo"  # a folder with _manifest.json and one sub-folder per split
    train_split: str = "train"
    eval_split: str = "eval"
    batch_size: int = 512  # per rank
    eval_batch_size: int = 4096  # per rank
    prefetch_batches: int = 8  # bounded queue of the background reader thread
    shuffle: bool = True  # row-group order per epoch (seeded) + rows within each row group
    dense_transform: str = "log1p"  # log1p (clamp negatives to 0, then log(x + 1)) | none
    validate: bool = True  # check ids in [0, cardinality), labels in {0, 1}, dense values finite; eval files before training
    on_bad_file: str = "fail"  # fail | skip (skip: warn, count in metrics, keep ranks in step)
    non_finite: str = "fail"  # dense NaN/inf (not nulls) under `validate`: fail | zero (replace with 0, count in metrics)
    synthesize_if_missing: bool = False  # generate `synth` data at `path` when absent


@dataclass
class ModelConfig:
    """The dense part of the model; the embedding module is injected."""

    arch: str = "dlrm"  # dlrm | dcn
    embedding_dim: int = 32
    dense_arch: List[int] = field(default_factory=lambda: [64, 32])  # last == embedding_dim
    over_arch: List[int] = field(default_factory=lambda: [64, 32, 1])  # last == 1
    dcn_num_layers: int = 3
    dcn_low_rank_dim: int = 16


@dataclass
class HashConfig:
    """Hashing trick: e(i) = E_f[h(i) mod m_f]."""

    rows: Optional[int] = None  # rows per feature; None: from `compression`
    hash: str = "splitmix64"  # splitmix64 | identity (tests: identity with rows >= N is a full table)
    seed: int = 0
    reserve_unseen: Optional[bool] = None  # never-trained ids read a reserved zero row (N bits; embeddings/seen.py); None: while the bits fit 1/10 of the budget


@dataclass
class QRConfig:
    """Quotient-remainder: e(i) = W_q[i // m] (op) W_r[i % m], composed per id, then pooled."""

    operation: str = "mult"  # mult | add | concat
    collisions: Optional[int] = None  # m (remainder rows); None: from `compression`
    remainder_init: float = 0.01  # mult: W_r ~ U(1 - x, 1 + x) starts near a plain table
    scatter: bool = True  # ids -> a*i mod N first (a ~ 0.618 N, coprime): a W_q row is not m frequency-adjacent ids
    reserve_unseen: Optional[bool] = None  # never-trained ids read a reserved zero W_q row (N bits; embeddings/seen.py); None: while the bits fit 1/10 of the budget


@dataclass
class MemComConfig:
    """MEmCom: e(i) = w[i] * E[h(i) mod m] (+ b[i]); one trainable weight per entity."""

    rows: Optional[int] = None  # m per feature; None: from `compression`
    hash: str = "splitmix64"  # splitmix64 | identity
    seed: int = 0
    scale_init: float = 0.0  # w starts at 0: an entity no step trained embeds to 0, as a full table's untrained row (1: a plain hashed table)
    bias: bool = False  # optional per-entity scalar bias b[i] added to every dimension
    pack: int = 4  # entities' scalars per row of the scale table (FBGEMM wants dims % 4 == 0)


@dataclass
class MixedDimConfig:
    """Mixed-dimension embeddings: block k gets width d_k = lambda * p_k^alpha, projected to d."""

    blocks: str = "rows"  # rows: frequency-ranked row blocks per feature | table: one block per table
    alpha: Optional[float] = None  # temperature; None: searched to meet `compression`
    num_blocks: int = 4  # row blocks per feature (rows mode), log-uniform in rank
    round_dims: bool = False  # round d_k to a power of two (reference option)
    threshold: int = 200  # table mode: tables with <= threshold rows keep the full width
    sample_rows: int = 200_000  # training rows counted to rank ids by frequency (rows mode)


@dataclass
class CafeConfig:
    """CAFE: a HotSketch picks hot ids online; hot ids own a row, the rest share hash rows."""

    hash_rate: float = 0.5  # share of the budget for the hash tables (the rest: hot rows + sketch)
    hot_rows: Optional[int] = None  # None: from `compression`
    threshold: float = 20.0  # T: an id is hot once its (decayed) importance reaches T
    decay: float = 0.99  # scores *= decay once the inserted importance since the last decay > w*T*10
    slots: int = 4  # slots per sketch bucket
    importance: str = "grad_norm"  # grad_norm | count
    levels: int = 1  # hash tables combined (summed) for non-hot ids: 1 = CAFE, >1 = multi-level
    reserve_unseen: Optional[bool] = None  # never-trained non-hot ids read reserved zero hash rows (N bits; embeddings/seen.py); None: while the bits fit 1/10 of the budget
    update_every: int = 1  # steps per sketch update: the importance of that many batches is inserted (and rows migrated) at once
    seed: int = 0


@dataclass
class RobeConfig:
    """ROBE: one shared circular array; an id reads d / block chunks of `block` values at hashed offsets."""

    block: int = 8  # Z: values per chunk (divides embedding_dim; 1 = element-wise hashing)
    size: Optional[int] = None  # |M|, values in the array (rounded up to a multiple of block); None: from `compression`
    hash: str = "universal"  # universal ((A e + B x + C c + D) mod P) mod rows | identity (tests: disjoint offsets)
    seed: int = 0  # draws A, B, C, D
    group_by: str = "model"  # model: one array | feature: one per compressed feature | groups: the lists below
    groups: List[List[str]] = field(default_factory=list)  # group_by=groups: features sharing an array each
    reserve_unseen: Optional[bool] = None  # never-trained ids read a reserved zero chunk row (N bits; embeddings/seen.py); None: while the bits fit 1/10 of the budget


@dataclass
class EmbeddingConfig:
    """Which embedding method; each method's own knobs live in its sub-config."""

    kind: str = "full"  # full | hash | qr | memcom | mixed_dim | cafe | robe
    small_field_rows: int = 200  # features with at most this many ids keep a full table
    max_table_rows: int = 1_000_000_000  # a table above this is an error before training (raw ids?)
    precision: str = "fp32"  # fp32 | fp16 | bf16 (CUDA only): storage of every table (embeddings/precision.py)
    hash: HashConfig = field(default_factory=HashConfig)
    qr: QRConfig = field(default_factory=QRConfig)
    memcom: MemComConfig = field(default_factory=MemComConfig)
    mixed_dim: MixedDimConfig = field(default_factory=MixedDimConfig)
    cafe: CafeConfig = field(default_factory=CafeConfig)
    robe: RobeConfig = field(default_factory=RobeConfig)


@dataclass
class CompressionConfig:
    """Target size of the embeddings: a ratio over the full tables, or a byte budget."""

    ratio: Optional[float] = None
    bytes: Optional[int] = None


@dataclass
class OptimConfig:
    """Dense optimizer (torch) and fused sparse optimizer (FBGEMM, applied in backward)."""

    dense: str = "adagrad"  # adagrad | adam | sgd
    dense_lr: float = 0.02
    sparse: str = "rowwise_adagrad"  # rowwise_adagrad | adagrad | sgd
    sparse_lr: float = 0.05
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps to lr (trainer/schedule.py)
    decay: str = "none"  # none | linear | cosine, after the warmup, dense and sparse lr alike
    decay_steps: int = 0  # step at which the decay ends; 0: the run's last step
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio


@dataclass
class DeepSpeedConfig:
    """DeepSpeed engine for the dense part (``dense.engine=deepspeed``). The optimizer is
    ``optim.dense`` / ``optim.dense_lr`` as a torch optimizer, so no C++ op is built."""

    zero_stage: int = 2  # 0 data parallel | 1 + optimizer state sharded | 2 + grads | 3 + params
    gradient_clipping: float = 0.0  # max global L2 norm of the dense gradients; 0 = off
    bf16: bool = False  # GPU only: bf16 autocast in the forward; params and master weights stay fp32
    extra: Dict[str, Any] = field(default_factory=dict)  # merged last into DeepSpeed's JSON config


@dataclass
class DenseConfig:
    """Who trains the dense part (bottom MLP, interaction / DCN, top MLP). The embedding
    tables always stay under DistributedModelParallel with their fused optimizer."""

    engine: str = "ddp"  # ddp (DMP wraps the dense part in DDP) | deepspeed (compactrec[deepspeed])
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


@dataclass
class ShardingConfig:
    """Which TorchRec sharding types the planner may pick; kernels are always fused."""

    types: List[str] = field(default_factory=lambda: ["table_wise", "row_wise"])
    per_table: Dict[str, List[str]] = field(default_factory=dict)  # table name -> types


@dataclass
class RankingConfig:
    """Ranking evaluation (``trainer/ranking.py``): each positive of the eval split ranked
    against sampled negatives. Runs when the data manifest has a ``ranking`` section."""

    enabled: bool = True
    negatives: int = 100  # unrated items sampled per positive
    k: int = 10  # nDCG@k, HR@k
    seed: int = 0  # the negatives' seed (fixed: every method is ranked on the same candidates)
    batch_size: int = 4096  # candidate rows per rank per step


@dataclass
class TrainerConfig:
    launcher: str = "ray"  # ray | local
    epochs: int = 1
    max_steps: int = -1  # per epoch cap; -1 = the whole split
    log_every: int = 50
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    progress_bar: bool = True
    tensorboard: bool = True
    checkpoint_every: int = 0  # steps between checkpoints; 0: only at the end; -1: never
    checkpoint_dir: str = ""  # default: RUN_DIR/checkpoints
    keep_checkpoints: int = 2  # newest valid checkpoints kept (also Ray's num_to_keep)
    resume_from: str = ""  # a checkpoint folder, a folder of them (latest valid), or "latest"
    resume_changes: List[str] = field(default_factory=list)  # keys/sections allowed to differ from the saved run (trainer/fingerprint.py)
    max_failures: int = 0  # worker failures to survive (Ray FailureConfig / local retries)
    fault_at_step: int = -1  # test knob: the last rank dies once at this step
    eval_every_epoch: bool = True  # evaluate after every epoch (metrics.json `evals`, TensorBoard eval/*)
    eval_every_steps: int = 0  # also evaluate every N steps; 0: off
    keep_best: bool = True  # keep the best evaluation's weights in RUN_DIR/best/ and name it in metrics.json
    best_metric: str = "auc"  # auc (higher is better) | logloss | ne (lower is better)
    run_id: str = ""  # set by the launcher per launch: a restarted worker group finds its own checkpoints


@dataclass
class MlflowConfig:
    """MLflow tracking through Ray's integration (``ray.air.integrations.mlflow``), rank 0
    only. An optional extra (``pip install 'compactrec[mlflow]'``), off by default; the
    TensorBoard scalars (train/loss, eval/*) go to MLflow as metrics, the config as params."""

    enabled: bool = False
    tracking_uri: str = ""  # "": MLflow's own default (MLFLOW_TRACKING_URI, else ./mlruns)
    experiment: str = "compactrec"  # created if missing
    tags: Dict[str, str] = field(default_factory=dict)


@dataclass
class ClusterConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    # "": attach to RAY_ADDRESS or a running `ray start` head, else start a local cluster;
    # "local": always a new local one; else this address (cluster/ray_address.py)
    address: str = ""
    torch_threads: int = 1  # intra-op threads per worker on CPU
    # glibc malloc keeps freed memory in each worker: no page faults on every step's tensors
    # (trainer/host_malloc.py; resident memory stays at its peak)
    keep_freed_memory: bool = True


@dataclass
class RunConfig:
    name: str = "demo"
    runs_dir: str = "runs"  # a run writes runs_dir/name/metrics.json
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    # Grid of dotted keys -> values, expanded by `compactrec sweep` (one run per point).
    sweep: Dict[str, List[Any]] = field(default_factory=dict)


_CHOICES: Dict[str, Sequence[str]] = {
    "model.arch": ("dlrm", "dcn"),
    "embedding.kind": ("full", "hash", "qr", "memcom", "mixed_dim", "cafe", "robe"),
    "embedding.robe.hash": ("universal", "identity"),
    "embedding.hash.hash": ("splitmix64", "identity"),
    "embedding.memcom.hash": ("splitmix64", "identity"),
    "embedding.qr.operation": ("mult", "add", "concat"),
    "embedding.mixed_dim.blocks": ("rows", "table"),
    "embedding.cafe.importance": ("grad_norm", "count"),
    "optim.dense": ("adagrad", "adam", "sgd"),
    "optim.sparse": ("rowwise_adagrad", "adagrad", "sgd"),
    "optim.decay": ("none", "linear", "cosine"),
    "trainer.best_metric": ("auc", "logloss", "ne"),
    "dense.engine": ("ddp", "deepspeed"),
    "dense.deepspeed.zero_stage": (0, 1, 2, 3),
    "trainer.launcher": ("ray", "local"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "data.dense_transform": ("log1p", "none"),
    "data.on_bad_file": ("fail", "skip"),
    "data.non_finite": ("fail", "zero"),
    "synth.cardinalities": ("criteo_tb_40m", "criteo_kaggle"),
}


def _merge(base: DictConfig, other: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{where}: bad key '{key}': {reason}") from None


def _check(cfg: RunConfig, src: Sources) -> None:
    """Choices, shapes and ranges; each error names the key and where its value came from."""
    for key, allowed in _CHOICES.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value not in allowed:
            raise ConfigError(f"{src(key)}: '{key}' is {value!r}; expected one of {list(allowed)}")
    check_knobs(cfg, src, ConfigError)
    if cfg.model.dense_arch[-1] != cfg.model.embedding_dim:
        raise ConfigError(
            f"{src('model.dense_arch')}: model.dense_arch must end in model.embedding_dim "
            f"({cfg.model.dense_arch[-1]} != {cfg.model.embedding_dim}, from {src('model.embedding_dim')})"
        )
    if cfg.model.over_arch[-1] != 1:
        raise ConfigError(f"{src('model.over_arch')}: model.over_arch must end in 1 (one logit)")
    if cfg.ranking.negatives < 1 or cfg.ranking.k < 1 or cfg.ranking.batch_size < 1:
        raise ConfigError(f"{src('ranking')}: ranking.negatives, ranking.k and ranking.batch_size must be >= 1")
    if cfg.compression.ratio is not None and cfg.compression.bytes is not None:
        raise ConfigError(f"{src('compression.bytes')}: set compression.ratio or compression.bytes, not both")
    for key in cfg.sweep:
        _dotted_get(cfg, key, str(src))  # a sweep over an unknown key fails now, not mid-sweep


def _dotted_get(cfg: Any, key: str, where: str) -> Any:
    node = OmegaConf.structured(cfg) if not isinstance(cfg, DictConfig) else cfg
    if OmegaConf.select(node, key, default="__missing__") == "__missing__":
        raise ConfigError(f"{where}: sweep key '{key}' is not a config key")
    return OmegaConf.select(node, key)


def load_structured(schema: Any, path: Optional[str | Path], overrides: Sequence[str] = (), what: str = "config") -> DictConfig:
    """``schema`` defaults <- YAML file <- dotted overrides, as an OmegaConf node.

    Raises:
        ConfigError: naming the file (or override) and the key that is unknown or mistyped.
    """
    node = OmegaConf.structured(schema)
    if path is not None:
        try:
            loaded = OmegaConf.load(path)
        except FileNotFoundError:
            raise ConfigError(f"{path}: {what} file not found") from None
        except Exception as e:  # YAML syntax errors come in many types
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        node = _merge(node, loaded, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        node = _merge(node, OmegaConf.from_dotlist([item]), f"override '{item}'")
    return node


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults <- YAML file <- dotted overrides; returns a validated ``RunConfig``.

    Raises:
        ConfigError: naming the file (or override) and the key that is unknown or mistyped.
    """
    run: RunConfig = OmegaConf.to_object(load_structured(RunConfig, path, overrides))  # type: ignore[assignment]
    _check(run, _sources(path, overrides))
    return run


def _sources(path: Optional[str | Path], overrides: Sequence[str]) -> Sources:
    """Which keys the file and the overrides set (the file was parsed once already)."""
    if path is None:
        return Sources(overrides=overrides)
    return Sources(str(path), flat_keys(OmegaConf.to_container(OmegaConf.load(path))), overrides)


def config_to_dict(cfg: RunConfig) -> Dict[str, Any]:
    """Plain nested dict (for Ray's ``train_loop_config`` and ``metrics.json``)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore


def config_from_dict(d: Dict[str, Any]) -> RunConfig:
    return _to_run(_merge(OmegaConf.structured(RunConfig), d, "config dict"))


def _to_run(node: DictConfig) -> RunConfig:
    return OmegaConf.to_object(node)  # type: ignore[return-value]


def with_overrides(cfg: RunConfig, overrides: Dict[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with dotted keys set (used by sweeps); validated like a file."""
    node = OmegaConf.structured(copy.deepcopy(cfg))
    for key, value in overrides.items():
        _dotted_get(node, key, "sweep")
        try:
            OmegaConf.update(node, key, value, merge=False)
        except OmegaConfBaseException as e:
            raise ConfigError(f"sweep: cannot set '{key}' to {value!r}: {e}") from None
    run = _to_run(node)
    _check(run, Sources(overrides=[f"{k}={v}" for k, v in overrides.items()], default="the swept config", label="sweep point"))
    return run


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from compactrec.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)))
