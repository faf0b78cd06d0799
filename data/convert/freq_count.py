"""The frequency map behind ``--max-ids``: a counting pass run once, reused by conversions.

``compactrec convert criteo-count INPUT... --out COUNTS_DIR`` (count the training days):

1. count: every piece (the conversion's pieces, in parallel) counts the non-empty raw
   values of each feature and writes them, split into ``BUCKETS`` buckets by a hash of the
   value, to ``COUNTS_DIR/.convert/partials/<piece>.npy``;
2. merge: one feature at a time, bucket by bucket, the partial counts are summed, then
   ranked by count (descending; ties by value). Memory: one bucket of every partial plus
   the feature's distinct values (16 bytes each), not the data.

Output per feature ``F``: ``F.ranked.npy`` (values in rank order), ``F.counts.npy`` (their
counts), ``F.sorted.npy`` (values ascending) and ``F.rank.npy`` (the rank of each sorted
value): conversion workers memory-map the last two and binary-search them. ``_counts.json``,
written last: inputs, rows, malformed lines, per feature distinct values and empty fields.
Counts are exact. The ranks do not depend on a cap: one count serves every ``--max-ids``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from compactrec.data.convert.piece import save_array
from compactrec.data.convert.criteo import SPARSE_NAMES
from compactrec.data.convert.parallel import Report, run_tasks
from compactrec.data.convert.pieces import (
    MARKERS, BadLines, PieceJob, file_marker_path, iter_pieces, marker_path, parsed, piece_name, plan_jobs,
)
from compactrec.data.convert.text_input import source
from compactrec.io import atomic_write, atomic_write_json

COUNTS_NAME = "_counts.json"
COUNTS_FORMAT = "compactrec-counts/1"
BUCKETS = 64
_F = len(SPARSE_NAMES)


def _reduce(values: np.ndarray, counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sum the counts of equal values; values come back sorted."""
    if values.size == 0:
        return values.astype(np.int64), counts.astype(np.int64)
    order = np.argsort(values, kind="stable")
    v, c = values[order], counts[order]
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    return v[starts], np.add.reduceat(c, starts)


def _bucket(values: np.ndarray) -> np.ndarray:
    return ((values.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(58)).astype(np.int64)  # 6 bits


# ---- 1. count (worker) ---------------------------------------------------------------
def _count_piece(job: PieceJob, piece: int, base: Optional[int], blocks, report: Report) -> Dict[str, Any]:
    out = Path(job.out)
    acc: List[List[Tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(_F)]
    empty, rows, lines, bad = [0] * _F, 0, 0, BadLines(job, piece, base)
    for cols, before, _ in parsed(blocks, bad):
        for f in range(_F):
            present = cols.cats[f][cols.cats[f] >= 0]
            empty[f] += cols.rows - present.size
            acc[f].append(np.unique(present, return_counts=True))
        rows, lines = rows + cols.rows, before + cols.lines
        report(0, cols.rows)
    offsets, values, counts = [0], [], []
    for f in range(_F):
        v, c = _reduce(np.concatenate([a[0] for a in acc[f]] or [np.zeros(0, np.int64)]),
                       np.concatenate([a[1] for a in acc[f]] or [np.zeros(0, np.int64)]))
        order = np.argsort(_bucket(v), kind="stable")  # by bucket, values ascending inside
        values.append(v[order])
        counts.append(c[order])
        offsets += (offsets[-1] + np.cumsum(np.bincount(_bucket(v), minlength=BUCKETS))).tolist()
    partial = out / MARKERS / "partials" / f"{piece_name(job.src.stem, piece)}.npy"
    partial.parent.mkdir(parents=True, exist_ok=True)
    flat = np.concatenate([np.array(offsets, np.int64), *values, *counts])
    atomic_write(partial, lambda tmp: save_array(tmp, flat))
    marker = {
        "version": 1, "stem": job.src.stem, "piece": piece, "input": job.src.path, "input_size": job.src.size,
        "lines": lines, "line_base": base, "rows": rows, "empty": empty, "bad": bad.to_json(),
        "files": {os.path.relpath(partial, out): os.path.getsize(partial)},
    }
    atomic_write_json(marker_path(out, job.src.stem, piece), marker)
    return marker


def count_task(job: PieceJob, report: Report) -> List[Dict[str, Any]]:
    return [_count_piece(job, k, base, blocks, report) for k, base, blocks in iter_pieces(job, report)]


# ---- 2. merge (one feature per task) ----------------------------------------------------
def _slices(flat: np.ndarray, f: int, b: int) -> Tuple[np.ndarray, np.ndarray]:
    """Values and counts of feature f, bucket b, in one partial (layout: offsets, values, counts)."""
    head = _F * BUCKETS + 1
    n = int(flat[head - 1])
    lo, hi = int(flat[f * BUCKETS + b]), int(flat[f * BUCKETS + b + 1])
    return np.asarray(flat[head + lo : head + hi]), np.asarray(flat[head + n + lo : head + n + hi])


def merge_task(args: Tuple[str, int, Sequence[str]], report: Report) -> Dict[str, Any]:
    out, f, partials = args
    name = SPARSE_NAMES[f]
    flats = [np.load(p, mmap_mode="r") for p in partials]
    values, counts = [], []
    for b in range(BUCKETS):
        parts = [_slices(flat, f, b) for flat in flats]
        v, c = _reduce(np.concatenate([p[0] for p in parts] or [np.zeros(0, np.int64)]),
                       np.concatenate([p[1] for p in parts] or [np.zeros(0, np.int64)]))
        values.append(v)
        counts.append(c)
    v, c = np.concatenate(values), np.concatenate(counts)
    order = np.lexsort((v, -c))  # count descending, then value ascending
    rank = np.empty(v.size, np.int64)
    rank[order] = np.arange(v.size)
    by_value = np.argsort(v, kind="stable")
    for suffix, array in (("ranked", v[order]), ("counts", c[order]), ("sorted", v[by_value]), ("rank", rank[by_value])):
        atomic_write(Path(out) / f"{name}.{suffix}.npy", lambda tmp, a=array: save_array(tmp, a))
    report(0, 0)
    return {"distinct": int(v.size), "top": [[int(x), int(n)] for x, n in zip(v[order][:5], c[order][:5])]}


# ---- tables for conversion ----------------------------------------------------------------
@dataclass
class FreqTable:
    sorted: np.ndarray  # distinct values ascending (memory-mapped)
    rank: np.ndarray  # their frequency ranks, 0 = most frequent

    @property
    def distinct(self) -> int:
        return int(self.sorted.shape[0])

    def ids(self, raw: np.ndarray, k: int) -> np.ndarray:
        """Ids 1..k for the k most frequent values, k + 1 for every other (empty: caller)."""
        out = np.full(raw.shape, k + 1, np.int64)
        if self.distinct == 0 or raw.size == 0:
            return out
        i = np.minimum(np.searchsorted(self.sorted, raw), self.distinct - 1)
        rank = np.asarray(self.rank[i])
        hit = (np.asarray(self.sorted[i]) == raw) & (rank < k)
        out[hit] = rank[hit] + 1
        return out


def load_table(counts_dir: str, name: str) -> FreqTable:
    d = Path(counts_dir)
    if not (d / COUNTS_NAME).exists():
        raise FileNotFoundError(f"{d / COUNTS_NAME}: no frequency counts (run `compactrec convert criteo-count`)")
    return FreqTable(np.load(d / f"{name}.sorted.npy", mmap_mode="r"), np.load(d / f"{name}.rank.npy", mmap_mode="r"))


def counts_digest(counts_dir: str) -> str:
    """Identifies a count (for a conversion's options check)."""
    obj = json.loads((Path(counts_dir) / COUNTS_NAME).read_text())
    return f"{obj['rows']}:{sorted((k, v['distinct']) for k, v in obj['features'].items())}"


# ---- driver ----------------------------------------------------------------------------------
def count_criteo(
    inputs: Sequence[str], out_dir: str, *, workers: int = 1, piece_bytes: int = 512 << 20,
    block_bytes: int = 16 << 20, on_error: str = "fail", progress: bool = True,
) -> Dict[str, Any]:
    """Count raw values per feature over ``inputs``; writes ``out_dir`` (see module doc)."""
    sources = [source(p) for p in inputs]
    if len({s.stem for s in sources}) != len(sources):
        raise ValueError(f"inputs share a name: {[s.path for s in sources]}")
    options, key = Path(out_dir) / MARKERS / "options.json", {"command": "count", "piece_bytes": piece_bytes}
    if (Path(out_dir) / "_manifest.json").exists() or (options.exists() and json.loads(options.read_text()) != key):
        raise ValueError(f"{out_dir} holds a conversion or a count with other options; count into another folder")
    atomic_write_json(options, key)
    plan = plan_jobs(sources, out_dir, piece_bytes)
    jobs = [PieceJob(src, k, out_dir, piece_bytes, block_bytes, on_error, skip) for src, k, skip in plan.todo]
    total = sum(s.size for s in sources)
    new = run_tasks(count_task, jobs, workers, total, "count", progress, plan.done_bytes)
    markers = plan.done + [m for ms in new for m in ms]
    for src in sources:
        if src.gz:
            pieces = 1 + max((m["piece"] for m in markers if m["stem"] == src.stem), default=-1)
            atomic_write_json(file_marker_path(out_dir, src.stem), {"pieces": pieces, "input_size": src.size})
    partials = [str(Path(out_dir) / next(iter(m["files"]))) for m in markers]
    merged = run_tasks(merge_task, [(out_dir, f, partials) for f in range(_F)], workers, 0, "merge", False)
    empty = np.sum([m["empty"] for m in markers], axis=0).tolist() if markers else [0] * _F
    summary = {
        "format": COUNTS_FORMAT,
        "inputs": [s.path for s in sources],
        "rows": sum(m["rows"] for m in markers),
        "malformed": sum(m["bad"]["count"] for m in markers),
        "buckets": BUCKETS,
        "features": {name: {**merged[f], "empty": int(empty[f])} for f, name in enumerate(SPARSE_NAMES)},
    }
    atomic_write_json(Path(out_dir) / COUNTS_NAME, summary)
    return summary
