"""The train/eval loop of one rank: data -> sharded model -> loss -> optimizer -> metrics.

Called by the worker entry point (``trainer/entry.py``) under Ray Train or the local
launcher, with the process group already up. Rank 0 writes ``RUN_DIR/metrics.json``.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from compactrec.embeddings.accounting import embedding_report
from compactrec.embeddings.factory import build_embeddings
from compactrec.sharding.env import DistEnv, all_gather_object
from compactrec.sharding.shard import shard_model
from compactrec.trainer.config import RunConfig, config_to_dict, save_config
from compactrec.trainer.data.id_counts import count_ids
from compactrec.trainer.data.manifest import Manifest, read_manifest
from compactrec.trainer.data.reader import ParquetReader
from compactrec.trainer.io import atomic_write_json
from compactrec.trainer.metrics import ctr_metrics
from compactrec.trainer.model import build_model
from compactrec.trainer.optim import apply_sparse_optimizer, build_optimizer

ProgressFactory = Callable[..., Any]  # tqdm-like: (total=, desc=, disable=) -> bar


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.runs_dir) / cfg.name


def build_train_model(cfg: RunConfig, manifest: Manifest, device: Optional[torch.device] = None) -> nn.Module:
    """The unsharded ``DLRMTrain`` with its sparse optimizer attached (same on every rank)."""
    torch.manual_seed(cfg.trainer.seed)  # identical initial weights on every rank
    files = manifest.split_files(cfg.data.path, cfg.data.train_split)
    emb = build_embeddings(
        cfg.embedding, cfg.compression, manifest.schema, cfg.model.embedding_dim, device,
        counts=lambda: count_ids(files, manifest.schema, cfg.embedding.mixed_dim.sample_rows),
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
    return train, evaluation


@torch.no_grad()
def evaluate(model: nn.Module, reader: ParquetReader, env: DistEnv) -> Dict[str, float]:
    """CTR metrics over the whole eval split (every rank's rows gathered, padding dropped)."""
    model.eval()
    labels, logits = [], []
    for batch in reader.epoch(0):
        _, (_, logit, label) = model(batch.to(env.device))
        n = batch.valid_rows
        labels.append(label[:n].cpu())
        logits.append(logit[:n].float().cpu())
    model.train()
    parts = all_gather_object((torch.cat(labels), torch.cat(logits)))
    return ctr_metrics(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


def _peak_memory_bytes(env: DistEnv) -> int:
    if env.device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(env.device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def train(
    cfg: RunConfig, env: DistEnv, progress: Optional[ProgressFactory] = None
) -> Dict[str, Any]:
    """Train ``cfg.trainer.epochs`` epochs, evaluate, return (and on rank 0 write) metrics."""
    manifest = read_manifest(cfg.data.path)
    unsharded = build_train_model(cfg, manifest)
    sizes = embedding_report(
        unsharded.model.sparse_arch.embedding_bag_collection,  # type: ignore[union-attr]
        manifest.schema,
        cfg.model.embedding_dim,
    )
    model = shard_model(unsharded, cfg.sharding.types, cfg.sharding.per_table, env)
    optimizer = build_optimizer(model, cfg.optim)
    train_reader, eval_reader = make_readers(cfg, manifest, env)

    out = run_dir(cfg)
    writer = None
    if env.is_main and cfg.trainer.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    step, train_seconds, last_loss = 0, 0.0, float("nan")
    for epoch in range(cfg.trainer.epochs):
        steps = train_reader.num_steps(epoch)
        bar = None
        if progress is not None and env.is_main and cfg.trainer.progress_bar:
            bar = progress(total=steps, desc=f"{cfg.name} epoch {epoch}")
        t0 = time.perf_counter()
        for batch in train_reader.epoch(epoch):
            loss, _ = model(batch.to(env.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % cfg.trainer.log_every == 0 or step == 1:
                last_loss = float(loss.detach())
                if writer is not None:
                    writer.add_scalar("train/loss", last_loss, step)
            if bar is not None:
                bar.update(1)
        train_seconds += time.perf_counter() - t0
        if bar is not None:
            bar.close()

    metrics: Dict[str, Any] = evaluate(model, eval_reader, env)
    samples = step * cfg.data.batch_size * env.world_size
    metrics.update(sizes)
    metrics.update(
        {
            "name": cfg.name,
            "embedding_kind": cfg.embedding.kind,
            "bayes_auc": manifest.stats.get("bayes_auc", {}).get(cfg.data.eval_split),
            "steps": step,
            "samples": samples,
            "world_size": env.world_size,
            "train_seconds": train_seconds,
            "samples_per_s": samples / train_seconds if train_seconds > 0 else 0.0,
            "last_train_loss": last_loss,
            "peak_memory_bytes": max(all_gather_object(_peak_memory_bytes(env))),
            "device": env.device.type,
        }
    )
    if writer is not None:
        for key in ("auc", "logloss", "ne"):
            writer.add_scalar(f"eval/{key}", metrics[key], step)
        writer.add_scalar("train/samples_per_s", metrics["samples_per_s"], step)
        writer.close()
    if env.is_main:
        save_config(cfg, out / "config.yaml")
        atomic_write_json(out / "metrics.json", {**metrics, "config": config_to_dict(cfg)})
    return metrics
