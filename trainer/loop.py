"""The train/eval loop of one rank: data -> sharded model -> loss -> optimizer -> metrics.

Called by the worker entry point (``trainer/entry.py``) under Ray Train or the local
launcher, with the process group already up. Rank 0 writes ``RUN_DIR/metrics.json``.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace as dc_replace
import os
import resource
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from compactrec.embeddings.accounting import embedding_report
from compactrec.embeddings.base import tables_on
from compactrec.embeddings.precision import check_precision
from compactrec.embeddings.factory import build_embeddings
from compactrec.sharding.env import DistEnv, all_gather_object, all_reduce_sum, node_id
from compactrec.sharding.planner import local_world_size_of_job
from compactrec.sharding.seen_sync import seen_count, sync_seen
from compactrec.sharding.shard import shard_model
from compactrec.trainer.checkpoint import TrainState, load_checkpoint, save_checkpoint, step_dir
from compactrec.trainer.config import RunConfig, config_to_dict, save_config
from compactrec.trainer.fingerprint import run_fingerprint
from compactrec.data.reader.id_counts import count_ids
from compactrec.data.reader.manifest import Manifest, manifest_path, read_manifest
from compactrec.data.reader.parquet import DataError, ParquetReader
from compactrec.data.datasets.side_tables import read_ranking_spec
from compactrec.trainer.dense_engine import build_dense_engine, check_dense_engine
from compactrec.io import atomic_write_json
from compactrec.trainer.metrics import ctr_metrics, ctr_metrics_from_sums, ctr_sums
from compactrec.trainer.model import build_model, embedding_module
from compactrec.trainer.ranking import dlrm_scorer, ranking_metrics
from compactrec.trainer.run_folder import run_dir
from compactrec.trainer.scalars import scalar_writer
from compactrec.trainer.optim import apply_sparse_optimizer
from compactrec.trainer.features import trainable_schema
from compactrec.trainer.best import BEST_DIR, CTR_KEYS, eval_entry, is_better
from compactrec.trainer.schedule import LrScheduler, is_constant
from compactrec.trainer.pipeline import train_step

ProgressFactory = Callable[..., Any]  # tqdm-like: (total=, desc=, disable=) -> bar
EXACT_EVAL_ROWS = 4_000_000  # above: binned AUC from merged histograms instead of gathering rows


def checkpoint_root(cfg: RunConfig) -> Path:
    """Where the run's checkpoints go: ``trainer.checkpoint_dir``, else RUN_DIR/checkpoints."""
    return Path(cfg.trainer.checkpoint_dir) if cfg.trainer.checkpoint_dir else run_dir(cfg) / "checkpoints"


def build_train_model(
    cfg: RunConfig, manifest: Manifest, device: Optional[torch.device] = None, env: Optional[DistEnv] = None
) -> nn.Module:
    """The unsharded ``DLRMTrain`` with its sparse optimizer attached (same on every rank).
    ``env``: every rank of it builds at once (a collective: mixed_dim's id sample is read
    once over the ranks, each its files, and merged); None: this process alone."""
    torch.manual_seed(cfg.trainer.seed)  # identical initial weights on every rank
    files = manifest.split_files(cfg.data.path, cfg.data.train_split)
    rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
    emb = build_embeddings(
        cfg.embedding, cfg.compression, manifest.schema, cfg.model.embedding_dim, device,
        counts=lambda: count_ids(files, manifest.schema, cfg.embedding.mixed_dim.sample_rows, rank, world,
                                 all_gather_object),
    )
    model = build_model(cfg.model, emb, len(manifest.schema.dense), device)
    apply_sparse_optimizer(model, cfg.optim)
    return model


def make_readers(cfg: RunConfig, manifest: Manifest, env: DistEnv) -> tuple[ParquetReader, ParquetReader]:
    d = cfg.data
    common: Dict[str, Any] = dict(
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.trainer.seed,
        dense_transform=d.dense_transform,
        validate=d.validate,
        prefetch=d.prefetch_batches,
        on_bad_file=d.on_bad_file,
        non_finite=d.non_finite,
    )
    train = ParquetReader(
        manifest.split_files(d.path, d.train_split),
        manifest.schema,
        d.batch_size,
        shuffle=d.shuffle,
        max_steps=cfg.trainer.max_steps,
        **common,
    )
    evaluation = ParquetReader(
        manifest.split_files(d.path, d.eval_split),
        manifest.schema,
        d.eval_batch_size,
        pad_last=True,
        **common,
    )
    for reader, split in ((train, d.train_split), (evaluation, d.eval_split)):
        _check_rows(reader, manifest, d.path, split)
    return train, evaluation


def _check_rows(reader: ParquetReader, manifest: Manifest, root: str, split: str) -> None:
    """The manifest's row count of a split must be what its files' footers hold (a stale
    manifest describes other data). Not judged when bad files were skipped."""
    want = manifest.splits[split].rows
    if not reader.bad_files and reader.total_rows != want:
        raise DataError(
            f"{manifest_path(root)}: split '{split}' says {want} rows; its {len(reader.files)} files hold "
            f"{reader.total_rows} (footers): the manifest does not describe these files"
        )


def check_data_ahead(cfg: RunConfig, env: DistEnv, train: ParquetReader, evaluation: ParquetReader) -> None:
    """Before the first step (``data.validate``, ``data.on_bad_file=fail``): footers of
    every file, suspicious row groups, and the first row group of every eval file, split
    over ranks; every rank raises the same ``DataError`` (the first problem, and a count)."""
    if not cfg.data.validate or cfg.data.on_bad_file != "fail":
        return
    mine = train.check_ahead(env.rank, env.world_size, first_row_group=False)
    mine += evaluation.check_ahead(env.rank, env.world_size, first_row_group=True)
    found = [p for part in all_gather_object(mine) for p in part]
    if found:
        more = f" (and {len(found) - 1} more problems found before training)" if len(found) > 1 else ""
        raise DataError(f"{found[0]}{more}")


@torch.no_grad()
def evaluate(
    model: nn.Module, reader: ParquetReader, env: DistEnv, forward: Optional[Callable[..., Any]] = None
) -> Dict[str, float]:
    """CTR metrics over the whole eval split (padding dropped). Up to ``EXACT_EVAL_ROWS`` rows
    in all, every rank's predictions are gathered and the AUC is exact; beyond (Criteo-TB's
    eval day), each rank sums a fixed-size histogram summary and one all_reduce merges them.
    ``forward`` (default ``model``): the dense engine's, which ZeRO-3 needs to gather weights."""
    sync_seen(model)  # reserve_unseen: an id any rank trained is known on every rank
    model.eval()
    forward = forward or model
    labels, logits = [], []
    for batch in reader.epoch(0):
        _, (_, logit, label) = forward(batch.to(env.device))
        n = batch.valid_rows
        labels.append(label[:n].cpu())
        logits.append(logit[:n].float().cpu())
    model.train()
    y, z = torch.cat(labels), torch.cat(logits)
    if sum(all_gather_object(y.numel())) > EXACT_EVAL_ROWS:
        return ctr_metrics_from_sums(all_reduce_sum(ctr_sums(y, z)))
    parts = all_gather_object((y, z))
    return ctr_metrics(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


def evaluate_ranking(
    cfg: RunConfig, model: nn.Module, manifest: Manifest, env: DistEnv, forward: Optional[Callable[..., Any]] = None
) -> Dict[str, Any]:
    """nDCG@k / HR@k on the eval split when the data set has user and item side tables
    (its manifest's ``ranking`` section), {} otherwise; every rank runs it (sharded model).
    ``forward`` as in ``evaluate``."""
    if not cfg.ranking.enabled or read_ranking_spec(cfg.data.path) is None:
        return {}
    r = cfg.ranking
    return ranking_metrics(
        dlrm_scorer(forward or model, env.device), cfg.data.path, manifest, cfg.data.eval_split, env,
        negatives=r.negatives, k=r.k, seed=r.seed, batch_size=r.batch_size,
        dense_transform=cfg.data.dense_transform, model=model,
    )


def _peak_memory_bytes(env: DistEnv) -> int:
    if env.device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(env.device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def cafe_hot_ids(model: nn.Module) -> Dict[str, Any]:
    """For CAFE: how many ids are hot and a digest of which (every rank's sketch shard
    together), so runs on different numbers of ranks can be compared. Collective."""
    from compactrec.embeddings.cafe import CafeEmbedding

    for m in model.modules():
        if isinstance(m, CafeEmbedding) and m.sketch is not None:
            m.flush()
            keys = sorted(k for part in all_gather_object(m.sketch.hot_keys()[0].tolist()) for k in part)
            return {"cafe_hot_ids": len(keys), "cafe_hot_digest": hashlib.sha256(str(keys).encode()).hexdigest()}
    return {}


def _check_same_data(*readers: ParquetReader) -> None:
    """Every rank must see the same row groups (on_bad_file=skip decides per rank, from the
    footers; a transient read error on one rank would otherwise make the step counts differ
    and hang a collective). One all_gather at start-up."""
    mine = [r.cursor()["data"] for r in readers]
    seen = all_gather_object(mine)
    if any(s != seen[0] for s in seen):
        raise RuntimeError(f"ranks see different data (row groups per rank: {[[d['row_groups'] for d in s] for s in seen]})")


def _data_stats(train: ParquetReader, evaluation: ParquetReader) -> Dict[str, Any]:
    """Bad input left out, summed over ranks (files: judged alike by every rank, counted once)."""
    parts = all_gather_object((train.stats(), evaluation.stats()))
    out: Dict[str, Any] = {}
    for split, i in (("train", 0), ("eval", 1)):
        out[f"data_{split}_bad_files"] = parts[0][i]["bad_files"]
        for key in ("bad_row_groups", "rows_lost", "rows_padded", "non_finite_values"):
            out[f"data_{split}_{key}"] = sum(p[i][key] for p in parts)
    return out


def state_digest(model: nn.Module) -> str:
    """sha256 over every rank's model state (rank order): equal digests = bitwise-equal
    weights, tables and sketch. Collective."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        parts = [s.tensor for s in t.local_shards()] if isinstance(t, ShardedTensor) else [t]
        for part in parts:
            h.update(key.encode())
            h.update(part.detach().contiguous().cpu().numpy().tobytes())
    return hashlib.sha256("".join(all_gather_object(h.hexdigest())).encode()).hexdigest()


class LossWindow:
    """The training loss averaged over the steps since the last log, on every rank: each
    step adds its batch loss on the device (no host sync); ``close()`` sums (loss, steps)
    over ranks with one all_reduce and starts a new window. Collective."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = 0
        self.last, self.last_steps = float("nan"), 0

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.detach().to(torch.float64)
        self.steps += 1

    def close(self) -> float:
        both = torch.stack([self.total, torch.tensor(float(self.steps), dtype=torch.float64, device=self.device)])
        total, steps = all_reduce_sum(both).tolist()
        self.last, self.last_steps = total / steps, self.steps
        self.total.zero_()
        self.steps = 0
        return self.last


def requested_ratio(cfg: RunConfig, sizes: Dict[str, Any]) -> float:
    """The compression the run asked for: ``compression.ratio``, or the full tables' bytes
    over ``compression.bytes``; 1 for the full table and for explicit sizes (which ask none)."""
    if cfg.embedding.kind == "full":
        return 1.0  # the baseline ignores `compression`, so sweeps can include it
    if cfg.compression.ratio is not None:
        return float(cfg.compression.ratio)
    if cfg.compression.bytes:
        return sizes["full_embedding_bytes"] / cfg.compression.bytes
    return float("nan")  # sizes set per method (embedding.hash.rows, ...): nothing was asked


def log_eval(writer: Any, metrics: Dict[str, Any], step: int, k: int, keys: Optional[tuple] = None) -> None:
    """Eval metrics as TensorBoard scalars at ``step`` (one point per evaluation: with an
    eval per epoch they draw curves); ``keys`` limits which."""
    for key in keys or (*CTR_KEYS, f"ndcg@{k}", f"hr@{k}"):
        if key in metrics:
            writer.add_scalar(f"eval/{key}", metrics[key], step)


def _say(line: str) -> None:
    print(line, flush=True)


def _inject_fault(cfg: RunConfig, env: DistEnv, step: int) -> None:
    """``trainer.fault_at_step``: the last rank dies once at that step (a marker file in the
    run folder makes the retry pass), so fault tolerance can be tested."""
    if cfg.trainer.fault_at_step != step or env.rank != env.world_size - 1:
        return
    marker = run_dir(cfg) / ".fault_injected"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"rank {env.rank} killed at step {step}\n")
    print(f"compactrec: fault injection: rank {env.rank} exits at step {step}", flush=True)
    os._exit(17)


def train(
    cfg: RunConfig,
    env: DistEnv,
    progress: Optional[ProgressFactory] = None,
    resume: Optional[Path] = None,
    on_checkpoint: Optional[Callable[[Path, Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Train ``cfg.trainer.epochs`` epochs (from ``resume``, a checkpoint folder, if given),
    checkpoint every ``trainer.checkpoint_every`` steps and at the end, evaluate, return
    (and on rank 0 write) metrics."""
    check_dense_engine(cfg.dense)  # a missing package fails before data and model are built
    check_precision(cfg.embedding.precision, env.device)  # bf16 tables have no FBGEMM CPU kernels
    manifest = read_manifest(cfg.data.path)
    manifest = dc_replace(manifest, schema=trainable_schema(manifest.schema, _say if env.is_main else None))
    # Tables on meta, the rest on the rank's device: DMP materialises only this rank's shards
    # (no host ever holds the whole model), dense parts and id maps are built where they run.
    with tables_on("meta"):
        unsharded = build_train_model(cfg, manifest, env.device, env)
    sizes = embedding_report(embedding_module(unsharded), manifest.schema, cfg.model.embedding_dim, cfg.optim.sparse)
    model = shard_model(
        unsharded, cfg.sharding.types, cfg.sharding.per_table, env, data_parallel=cfg.dense.engine == "ddp",
        batch_size=cfg.data.batch_size,
    )
    engine = build_dense_engine(cfg.dense, cfg.optim, model, env)  # steps tables and dense part
    train_reader, eval_reader = make_readers(cfg, manifest, env)
    _check_same_data(train_reader, eval_reader)
    check_data_ahead(cfg, env, train_reader, eval_reader)
    out = run_dir(cfg)
    ckpt_root = checkpoint_root(cfg)
    fingerprint = run_fingerprint(cfg, manifest.digest)
    state = TrainState(
        step=0, epoch=0, world_size=env.world_size, config=config_to_dict(cfg), run_id=cfg.trainer.run_id,
        fingerprint=fingerprint,
    )
    if resume is not None:
        state = load_checkpoint(resume, engine, fingerprint, cfg.trainer.resume_changes)
        if env.is_main:
            print(f"compactrec: resumed from {resume} at step {state.step} (epoch {state.epoch})", flush=True)
        state.world_size, state.run_id = env.world_size, cfg.trainer.run_id
        state.config, state.fingerprint = config_to_dict(cfg), fingerprint  # the next resume compares with this run

    writer = scalar_writer(cfg, env.is_main, out)  # TensorBoard and / or MLflow, rank 0
    every = cfg.trainer.checkpoint_every
    t = cfg.trainer
    total_steps = sum(train_reader.num_steps(e, None) for e in range(t.epochs))
    schedule = None if is_constant(cfg.optim) else LrScheduler(cfg.optim, engine.optimizers(), total_steps)
    last_eval: Dict[str, Any] = {}

    def run_eval(epoch: int, end_of_epoch: bool) -> Dict[str, Any]:
        """Evaluate now (collective), record it, keep the best weights (trainer/best.py)."""
        repeat = bool(state.evals) and state.evals[-1]["step"] == state.step
        if repeat and last_eval:
            return last_eval  # already evaluated at this step (eval_every_steps hit the epoch's end)
        metrics = evaluate(model, eval_reader, env, engine.forward)
        last_eval.clear()
        last_eval.update(metrics)
        if repeat:  # a resumed run that had finished: the same weights, evaluated again
            return metrics
        entry = eval_entry(metrics, epoch, state.step, end_of_epoch)
        state.evals.append(entry)
        if writer is not None:
            log_eval(writer, metrics, state.step, cfg.ranking.k, CTR_KEYS)
        if is_better(entry, state.best, t.best_metric):
            state.best = dict(entry)
            if t.keep_best:  # a complete checkpoint of these weights (the state as of now)
                state.epoch, state.cursor = (epoch, None) if end_of_epoch else (epoch - 1, train_reader.cursor())
                state.best["checkpoint"] = str(step_dir(out / BEST_DIR, state.step))
                save_checkpoint(out / BEST_DIR, engine, state, keep=1)
        if env.is_main:
            shown = ", ".join(f"{k} {entry[k]:.4f}" for k in CTR_KEYS if k in entry)
            print(f"compactrec: eval at step {state.step} (epoch {epoch}): {shown}", flush=True)
        return metrics
    run_steps, train_seconds = 0, 0.0
    window = LossWindow(env.device)
    samples_per_step = cfg.data.batch_size * env.world_size

    def checkpoint(epoch: int, cursor: Optional[Dict[str, Any]]) -> None:
        state.epoch, state.cursor = epoch, cursor
        sync_seen(model)  # the saved bits: every rank's trained ids, not rank 0's alone
        path = save_checkpoint(ckpt_root, engine, state, keep=cfg.trainer.keep_checkpoints)
        if on_checkpoint is not None:
            on_checkpoint(path, {"step": state.step, "epoch": epoch})

    try:
        for epoch in range(state.epoch, cfg.trainer.epochs):
            cursor = state.cursor if epoch == state.epoch else None
            steps = train_reader.num_steps(epoch, cursor)
            bar = None
            if progress is not None and env.is_main and cfg.trainer.progress_bar:
                bar = progress(total=steps, desc=f"{cfg.name} epoch {epoch}")
            t0 = time.perf_counter()
            for batch in train_reader.epoch(epoch, cursor):
                if schedule is not None:
                    lr = schedule.set_step(state.step)
                loss = train_step(engine, batch, env.device)
                state.step += 1
                state.samples += samples_per_step
                run_steps += 1
                window.add(loss)
                if state.step % cfg.trainer.log_every == 0:
                    train_loss = window.close()  # collective: every rank logs at the same steps
                    if writer is not None:
                        writer.add_scalar("train/loss", train_loss, state.step)
                        if schedule is not None:
                            writer.add_scalar("train/lr", lr, state.step)
                if t.eval_every_steps and state.step % t.eval_every_steps == 0:
                    train_seconds += time.perf_counter() - t0
                    run_eval(epoch + 1, False)
                    t0 = time.perf_counter()
                if bar is not None:
                    bar.update(1)
                if every > 0 and state.step % every == 0:
                    train_seconds += time.perf_counter() - t0
                    checkpoint(epoch, train_reader.cursor())
                    t0 = time.perf_counter()
                _inject_fault(cfg, env, state.step)
            train_seconds += time.perf_counter() - t0
            if bar is not None:
                bar.close()
            state.epoch, state.cursor = epoch + 1, None
            if t.eval_every_epoch:
                run_eval(epoch + 1, True)
                state.epoch, state.cursor = epoch + 1, None  # a best checkpoint set them for itself
    except Exception as e:  # where it broke, for the launcher's message (entry.py, cluster/fault_message.py)
        e.compactrec_where = (  # type: ignore[attr-defined]
            f"rank {env.rank} on node {socket.gethostname()} (pid {os.getpid()}) after step {state.step} "
            f"(epoch {state.epoch})"
        )
        raise
    if every >= 0:
        checkpoint(state.epoch, None)
    if window.steps:  # the steps since the last log (all ranks ran the same number)
        train_loss = window.close()
        if writer is not None:
            writer.add_scalar("train/loss", train_loss, state.step)

    metrics: Dict[str, Any] = dict(run_eval(state.epoch, True))  # the final weights' (reused when just taken)
    ranking = evaluate_ranking(cfg, model, manifest, env, engine.forward)
    metrics.update(ranking)
    metrics.update(sizes)
    metrics.update(
        {
            "name": cfg.name,
            "embedding_kind": cfg.embedding.kind,
            "bayes_auc": manifest.stats.get("bayes_auc", {}).get(cfg.data.eval_split),
            "steps": state.step,
            "samples": state.samples,
            "world_size": env.world_size,
            "local_world_size": local_world_size_of_job(env.world_size),  # ranks per host, as planned
            "nodes": len(set(all_gather_object(node_id()))),  # distinct Ray nodes (or hosts) of the ranks
            "train_seconds": train_seconds,
            "samples_per_s": run_steps * samples_per_step / train_seconds if train_seconds > 0 else 0.0,
            "train_loss": window.last,  # mean over the last log window, every rank
            "train_loss_steps": window.last_steps,
            "ratio_requested": requested_ratio(cfg, sizes),
            "peak_memory_bytes": max(all_gather_object(_peak_memory_bytes(env))),
            "dense_engine": engine.name,
            "dense_optimizer_state_bytes": max(all_gather_object(engine.memory_report()["optimizer_state"])),
            "device": env.device.type,
            "weights_digest": state_digest(model),
            **cafe_hot_ids(model),
            "seen_ids": seen_count(model),  # reserve_unseen: ids marked as trained (0 when off)
            "resumed_from": str(resume) if resume is not None else None,
            **_data_stats(train_reader, eval_reader),
            "evals": state.evals,  # every evaluation: epoch, step, auc, logloss, ne
            "best": state.best,  # the best of them by trainer.best_metric (+ its checkpoint)
            "best_epoch": state.best["epoch"] if state.best else None,
            "best_auc": state.best.get("auc") if state.best else None,
        }
    )
    if writer is not None:
        log_eval(writer, ranking, state.step, cfg.ranking.k)
        writer.add_scalar("train/samples_per_s", metrics["samples_per_s"], state.step)
        writer.close()
    if env.is_main:
        save_config(cfg, out / "config.yaml")
        atomic_write_json(out / "metrics.json", {**metrics, "config": config_to_dict(cfg)})
    return metrics
