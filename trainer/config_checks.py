"""Range checks of the run's knobs, each error naming the key and where its value came from.

``Sources`` remembers, for a config built from defaults <- YAML file <- overrides, which of
the three set each key, so that ``data.batch_size=0`` typed on the command line is blamed
on that override and not on the YAML file. ``check_knobs`` refuses values that would crash
deep in numpy / torch / Ray or silently do harm (a zero batch size, zero workers,
``keep_checkpoints=0`` deleting every checkpoint, a run name that climbs out of
``runs_dir``).

Example::

    src = Sources("configs/demo.yaml", file_keys={"data.batch_size"}, overrides=["data.batch_size=0"])
    src("data.batch_size")  # "override 'data.batch_size=0'"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple


class Sources:
    """Which input set each dotted key: an override (latest wins), the file, or ``default``."""

    def __init__(
        self,
        file: Optional[str] = None,
        file_keys: Iterable[str] = (),
        overrides: Sequence[str] = (),
        default: str = "defaults",
        label: str = "override",
    ) -> None:
        self.file = file
        self.file_keys = set(file_keys)
        self.overrides: Dict[str, str] = {}
        for item in overrides:
            self.overrides[item.split("=", 1)[0].strip()] = f"{label} '{item}'"
        self.default = default

    def __call__(self, key: str) -> str:
        parts = key.split(".")
        prefixes = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        for p in prefixes:  # `data.batch_size=0` and `data={batch_size: 0}` both set it
            if p in self.overrides:
                return self.overrides[p]
        if self.file is not None and any(p in self.file_keys for p in prefixes):
            return self.file
        return self.default if self.file is None else f"defaults (not set in {self.file})"

    def __str__(self) -> str:
        return self.file or self.default


def flat_keys(node: Any, prefix: str = "") -> List[str]:
    """Dotted leaf keys of a plain nested dict (a loaded YAML file)."""
    if not isinstance(node, dict) or not node:
        return [prefix] if prefix else []
    return [k for key, v in node.items() for k in flat_keys(v, f"{prefix}.{key}" if prefix else str(key))]


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


# (key, test, what it must be): one line per knob that needs more than its type.
_RULES: Tuple[Tuple[str, Callable[[Any], bool], str], ...] = (
    ("data.batch_size", lambda v: v >= 1, ">= 1 (rows per rank per step)"),
    ("data.eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("data.prefetch_batches", lambda v: v >= 1, ">= 1"),
    ("cluster.num_workers", lambda v: v >= 1, ">= 1"),
    ("cluster.cpus_per_worker", lambda v: v >= 1, ">= 1"),
    ("cluster.torch_threads", lambda v: v >= 0, ">= 0 (0: torch's default)"),
    ("trainer.epochs", lambda v: v >= 0, ">= 0"),
    ("trainer.max_steps", lambda v: v == -1 or v >= 1, "-1 (the whole split) or >= 1"),
    ("trainer.log_every", lambda v: v >= 1, ">= 1"),
    ("trainer.checkpoint_every", lambda v: v >= -1, "-1 (never), 0 (only at the end) or >= 1 steps"),
    ("trainer.keep_checkpoints", lambda v: v >= 1, ">= 1 (the newest checkpoint is always kept)"),
    ("trainer.max_failures", lambda v: v >= 0, ">= 0"),
    ("model.embedding_dim", lambda v: v >= 1, ">= 1"),
    ("model.dense_arch", lambda v: len(v) >= 1 and all(x >= 1 for x in v), "a non-empty list of widths >= 1"),
    ("model.over_arch", lambda v: len(v) >= 1 and all(x >= 1 for x in v), "a non-empty list of widths >= 1"),
    ("model.dcn_num_layers", lambda v: v >= 1, ">= 1"),
    ("model.dcn_low_rank_dim", lambda v: v >= 1, ">= 1"),
    ("embedding.small_field_rows", lambda v: v >= 0, ">= 0"),
    ("embedding.max_table_rows", lambda v: v >= 1, ">= 1"),
    ("embedding.precision", lambda v: v in ("fp32", "fp16", "bf16"), "one of fp32, fp16, bf16 (bf16: CUDA only)"),
    ("embedding.mixed_dim.num_blocks", lambda v: v >= 1, ">= 1"),
    ("embedding.mixed_dim.sample_rows", lambda v: v >= 1, ">= 1"),
    ("embedding.cafe.levels", lambda v: v >= 1, ">= 1"),
    ("embedding.cafe.slots", lambda v: v >= 1, ">= 1"),
    ("embedding.cafe.update_every", lambda v: v >= 1, ">= 1"),
    ("compression.ratio", lambda v: v is None or v > 0, "> 0 (or unset)"),
    ("compression.bytes", lambda v: v is None or v > 0, "> 0 (or unset)"),
    ("optim.dense_lr", lambda v: v >= 0, ">= 0"),
    ("optim.sparse_lr", lambda v: v >= 0, ">= 0"),
    ("optim.eps", lambda v: v > 0, "> 0"),
    ("optim.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("optim.decay_steps", lambda v: v >= 0, ">= 0 (0: the run's last step)"),
    ("optim.min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("trainer.eval_every_steps", lambda v: v >= 0, ">= 0 (0: off)"),
    ("synth.rows_train", lambda v: v >= 1, ">= 1"),
    ("synth.rows_eval", lambda v: v >= 1, ">= 1"),
    ("synth.shards_train", lambda v: v >= 1, ">= 1"),
    ("synth.shards_eval", lambda v: v >= 1, ">= 1"),
    ("synth.row_group_size", lambda v: v >= 1, ">= 1"),
)


def _check_name(cfg: Any, src: Sources, fail: Callable[[str], Exception]) -> None:
    """The run folder ``runs_dir/name`` must lie inside ``runs_dir`` (a sweep's ``demo/kind=x``
    is fine; ``../../x`` or an absolute name would write elsewhere)."""
    name = cfg.name
    parts = name.split("/")  # not PurePosixPath: it drops "." parts
    if not name or name.startswith(("/", "~")) or "\\" in name or any(p in ("..", ".") for p in parts) or "\x00" in name:
        raise fail(f"{src('name')}: name={name!r}: must be a relative path inside runs_dir without '..', '.' or a leading '/'")
    runs = Path(cfg.runs_dir).expanduser().resolve() if "://" not in cfg.runs_dir else None
    if runs is not None and runs not in (runs / name).resolve().parents:
        raise fail(f"{src('name')}: name={name!r}: runs_dir/name resolves outside runs_dir ({runs})")


def check_knobs(cfg: Any, src: Sources, fail: Callable[[str], Exception]) -> None:
    """Every rule of ``_RULES`` and the run name; ``fail(message)`` builds the error raised."""
    for key, ok, expected in _RULES:
        value = _get(cfg, key)
        if not ok(value):
            raise fail(f"{src(key)}: {key}={value!r}: must be {expected}")
    _check_name(cfg, src, fail)
