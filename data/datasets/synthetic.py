"""Synthetic Criteo-shaped Parquet shards with labels drawn from a planted teacher.

Schema: ``label`` int8, ``int_0..int_12`` float32 (raw non-negative counts, a few
negatives as in Criteo), ``cat_0..cat_25`` int64 (or list<int64> for multi-hot features),
``p_true`` float32 (the teacher's click probability).

The teacher, per row::

    u_f(i)  ~ N(0, I_k)                  one fixed latent vector per (feature, id), k = latent_dim
    g       = sum_f s_f * u_f(id_f) + W t  t = standardized log1p(dense), (k,)
    z       = bias + v . tanh(g)           a fixed nonlinearity
    label   ~ Bernoulli(sigmoid(z))

Ids of feature f follow a Zipf law of exponent a_f over N_f ids, scattered over [0, N_f) by
an affine permutation (hot ids are not 0, 1, 2...). Latent vectors come from a counter
hash (splitmix64) of (seed, feature, id), so they are the same in every shard and need no
table for large N_f. Every draw is seeded per (split, shard): output is deterministic.
The AUC of ``p_true`` on the eval split is the Bayes AUC: the ceiling for any model.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from compactrec.hashing import splitmix64_np as splitmix64
from compactrec.trainer.config import SynthConfig
from compactrec.data.convert import criteo
from compactrec.data.reader.manifest import (
    FeatureSchema,
    Manifest,
    SparseFeature,
    SplitInfo,
    write_manifest,
)
from compactrec.io import atomic_write
from compactrec.trainer.metrics import auc

_TABLE_LIMIT = 1 << 22  # materialize a feature's latent table up to this many ids


def _uniform(key: np.ndarray) -> np.ndarray:
    return ((splitmix64(key) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def synthetic_cardinalities(cfg: SynthConfig) -> List[int]:
    base = criteo.CARDINALITIES[cfg.cardinalities]
    return [max(min(n, cfg.min_cardinality), int(round(n * cfg.scale))) for n in base]


class Teacher:
    """The planted model; all its parameters follow from ``cfg.seed``."""

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg
        self.cards = synthetic_cardinalities(cfg)
        rng = np.random.default_rng([cfg.seed, 7])
        nf, k = len(self.cards), cfg.latent_dim
        self.zipf = rng.uniform(cfg.zipf_min, cfg.zipf_max, nf)
        self.perm_a = [self._coprime(rng, n) for n in self.cards]
        self.perm_b = [int(rng.integers(0, n)) for n in self.cards]
        s = rng.uniform(0.3, 1.0, nf)
        self.feature_scale = s * cfg.id_effect / np.sqrt((s**2).sum())
        w = rng.normal(0.0, 1.0, (k, criteo.NUM_DENSE))
        self.dense_w = w * cfg.dense_effect / np.sqrt((w**2).sum(1, keepdims=True))
        self.v = rng.normal(0.0, 2.0 / math.sqrt(k), k)
        # Dense columns: x = floor(exp(N(mu, sigma))) - 1; t = log1p(max(x, 0)) standardized.
        self.dense_mu = rng.uniform(0.0, 3.0, criteo.NUM_DENSE)
        self.dense_sigma = rng.uniform(0.5, 1.5, criteo.NUM_DENSE)
        probe = self._dense_raw(np.random.default_rng([cfg.seed, 8]), 100_000)
        t = np.log1p(np.maximum(probe, 0))
        self.t_mean, self.t_std = t.mean(0), t.std(0) + 1e-6
        self._tables: Dict[int, np.ndarray] = {}

    @staticmethod
    def _coprime(rng: np.random.Generator, n: int) -> int:
        if n == 1:
            return 1
        while True:
            a = int(rng.integers(1, n))
            if math.gcd(a, n) == 1:
                return a

    def latent(self, f: int, ids: np.ndarray) -> np.ndarray:
        """u_f(ids): (len(ids), k) float64 standard normals, fixed per (seed, f, id)."""
        n = self.cards[f]
        if n <= _TABLE_LIMIT:
            if f not in self._tables:
                self._tables[f] = self._hash_latent(f, np.arange(n, dtype=np.int64))
            return self._tables[f][ids]
        return self._hash_latent(f, ids)

    def _hash_latent(self, f: int, ids: np.ndarray) -> np.ndarray:
        k = self.cfg.latent_dim
        base = (ids.astype(np.uint64)[:, None] * np.uint64(2 * k)) + np.arange(
            2 * k, dtype=np.uint64
        )
        salt = splitmix64(np.array([self.cfg.seed * 1000 + f], dtype=np.uint64))[0]
        u = _uniform(base ^ salt)
        u1, u2 = u[:, :k], u[:, k:]
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)  # Box-Muller

    def sample_ids(self, f: int, rng: np.random.Generator, size: int) -> np.ndarray:
        n, a = self.cards[f], self.zipf[f]
        u = rng.random(size)
        x = (1.0 - u * (1.0 - (n + 1.0) ** (1.0 - a))) ** (1.0 / (1.0 - a))
        rank = np.clip(np.floor(x).astype(np.int64) - 1, 0, n - 1)
        return (rank * self.perm_a[f] + self.perm_b[f]) % n

    def _dense_raw(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        z = rng.normal(self.dense_mu, self.dense_sigma, (rows, criteo.NUM_DENSE))
        x = np.floor(np.exp(z)) - 1.0
        x[:, 1] -= (rng.random(rows) < 0.05) * 2.0  # Criteo's int_1 has small negatives
        return x

    def sample(self, rng: np.random.Generator, rows: int) -> Dict[str, np.ndarray | list]:
        """One block of rows: columns by name (multi-hot features as lists of arrays)."""
        cfg, nf = self.cfg, len(self.cards)
        dense = self._dense_raw(rng, rows)
        t = (np.log1p(np.maximum(dense, 0)) - self.t_mean) / self.t_std
        g = t @ self.dense_w.T  # (rows, k)
        cols: Dict[str, np.ndarray | list] = {}
        first_multi = nf - cfg.multi_hot_features
        for f in range(nf):
            name = criteo.SPARSE_NAMES[f]
            if f < first_multi:
                ids = self.sample_ids(f, rng, rows)
                g += self.feature_scale[f] * self.latent(f, ids)
                cols[name] = ids
            else:
                lengths = rng.integers(1, cfg.multi_hot_max_len + 1, rows)
                ids = self.sample_ids(f, rng, int(lengths.sum()))
                bag = np.repeat(np.arange(rows), lengths)
                summed = np.zeros((rows, cfg.latent_dim))
                np.add.at(summed, bag, self.latent(f, ids))
                g += self.feature_scale[f] * summed / lengths[:, None]  # mean over the bag
                cols[name] = np.split(ids, np.cumsum(lengths)[:-1])
        z = cfg.bias + np.tanh(g) @ self.v
        p = 1.0 / (1.0 + np.exp(-z))
        cols["label"] = (rng.random(rows) < p).astype(np.int8)
        cols["p_true"] = p.astype(np.float32)
        for j, name in enumerate(criteo.DENSE_NAMES):
            cols[name] = dense[:, j].astype(np.float32)
        return cols


def _arrow_table(cols: Dict[str, np.ndarray | list], multi: List[str]) -> pa.Table:
    arrays, names = [pa.array(cols["label"], pa.int8())], ["label"]
    for name in criteo.DENSE_NAMES:
        arrays.append(pa.array(cols[name], pa.float32()))
        names.append(name)
    for name in criteo.SPARSE_NAMES:
        typ = pa.list_(pa.int64()) if name in multi else pa.int64()
        arrays.append(pa.array(cols[name], typ))
        names.append(name)
    arrays.append(pa.array(cols["p_true"], pa.float32()))
    names.append("p_true")
    return pa.Table.from_arrays(arrays, names=names)


def _write_shard(
    teacher: Teacher, path: Path, rows: int, seed_key: Tuple[int, ...], multi: List[str]
) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed_key)
    cfg = teacher.cfg
    labels, probs = [], []

    def write(tmp: str) -> None:
        writer: Optional[pq.ParquetWriter] = None
        done = 0
        while done < rows:
            n = min(cfg.row_group_size, rows - done)
            table = _arrow_table(teacher.sample(rng, n), multi)
            labels.append(table.column("label").to_numpy())
            probs.append(table.column("p_true").to_numpy())
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=cfg.row_group_size)
            done += n
        if writer is not None:
            writer.close()

    atomic_write(path, write)
    return np.concatenate(labels), np.concatenate(probs)


def generate(cfg: SynthConfig, out_dir: str | Path, progress: bool = False) -> Manifest:
    """Write ``out_dir/{train,eval}/part-NNNNN.parquet`` and ``out_dir/_manifest.json``."""
    out = Path(out_dir)
    teacher = Teacher(cfg)
    nf = len(teacher.cards)
    multi = criteo.SPARSE_NAMES[nf - cfg.multi_hot_features :] if cfg.multi_hot_features else []
    splits: Dict[str, SplitInfo] = {}
    stats: Dict[str, dict] = {"bayes_auc": {}, "ctr": {}}
    for split_id, (split, rows, shards) in enumerate(
        [("train", cfg.rows_train, cfg.shards_train), ("eval", cfg.rows_eval, cfg.shards_eval)]
    ):
        per = [rows // shards + (1 if i < rows % shards else 0) for i in range(shards)]
        files, labels, probs = [], [], []
        for i, n in enumerate(per):
            rel = f"{split}/part-{i:05d}.parquet"
            if progress:
                print(f"synth: writing {out / rel} ({n} rows)", flush=True)
            y, p = _write_shard(teacher, out / rel, n, (cfg.seed, split_id, i), multi)
            files.append(rel)
            labels.append(y)
            probs.append(p)
        y_all, p_all = np.concatenate(labels), np.concatenate(probs)
        splits[split] = SplitInfo(files=files, rows=int(rows))
        stats["bayes_auc"][split] = auc(torch.from_numpy(y_all), torch.from_numpy(p_all))
        stats["ctr"][split] = float(y_all.mean())
    schema = FeatureSchema(
        label="label",
        dense=tuple(criteo.DENSE_NAMES),
        sparse=tuple(
            SparseFeature(name, card, name in multi)
            for name, card in zip(criteo.SPARSE_NAMES, teacher.cards)
        ),
    )
    stats["generator"] = {"kind": "synthetic", **asdict(cfg)}
    manifest = Manifest(schema=schema, splits=splits, stats=stats)
    write_manifest(out, manifest)
    return manifest
