"""``compactrec convert criteo``: Criteo click logs (day_0..day_23, plain or .gz; Kaggle's
train.txt) -> Parquet shards in the project schema plus ``_manifest.json``.

Shard schema: ``label`` int8; ``int_0..int_12`` float32, the raw integers (negatives kept,
an empty field is null; the reader applies ``log(1 + max(x, 0))`` or not, per
``data.dense_transform``); ``cat_0..cat_25`` int64 ids, 0 for an empty field (``id_map.py``:
raw value + 1, hashed to ``--max-ids``, or frequency-ranked from ``criteo-count``).

Work: every input is cut into pieces of ``piece_bytes`` of text (``text_input.py``); a
process pool converts pieces in parallel (one job per .gz file, which streams), each into
``SPLIT/<stem>-part-NNNNN.parquet`` with row groups of ``row_group_rows`` rows. Memory per
worker: one block of text and one row group per open shard. Re-running the same command
skips complete pieces (``pieces.py``) and redoes half-written ones. The manifest is written
last, atomically: features with cardinality = largest id written + 1; splits with files and
rows; stats with per-column statistics, distinct-count estimates (HyperLogLog, 0.8%), the
id map, and malformed lines (count, per input, the first examples with file and line).

Example::

    convert_criteo(["raw/day_0.gz", "raw/day_23.gz"], "data/criteo",
                   ConvertOptions(split="criteo_tb", id_map=IdMapSpec("hash", max_ids=40_000_000), workers=8))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from compactrec.data.convert.piece import ConvertJob, convert_task
from compactrec.data.convert.stats import ColumnStats
from compactrec.data.convert.criteo import DENSE_NAMES, LABEL, SPARSE_NAMES
from compactrec.data.convert.criteo_splits import check_inputs, natural_key, split_rule
from compactrec.data.convert.hll import PRECISION
from compactrec.data.convert.id_map import IdMap, IdMapSpec
from compactrec.data.reader.manifest import FeatureSchema, Manifest, SparseFeature, SplitInfo, write_manifest
from compactrec.data.convert.parallel import Report, run_tasks
from compactrec.data.convert.pieces import MARKERS, PieceJob, file_marker_path, plan_jobs
from compactrec.data.convert.text_input import Source, count_line_starts, count_lines_gz, source
from compactrec.io import atomic_write_json

MAX_REPORTED = 100  # malformed lines listed in the manifest


class ConvertError(ValueError):
    """A conversion cannot start or continue; the message names the file (and line)."""


@dataclass(frozen=True)
class ConvertOptions:
    split: str = "none"  # criteo_tb | kaggle | none (criteo_splits.py)
    id_map: IdMapSpec = field(default_factory=IdMapSpec)
    on_error: str = "fail"  # fail | skip
    workers: int = 1
    piece_bytes: int = 512 << 20  # text per piece (= per shard)
    block_bytes: int = 16 << 20  # text parsed at a time
    row_group_rows: int = 1 << 18
    compression: str = "snappy"
    progress: bool = True

    def output_key(self) -> Dict[str, Any]:
        """What the shards depend on: a re-run must use the same."""
        key = {"split": self.split, "id_map": self.id_map.to_json(), "piece_bytes": self.piece_bytes,
               "row_group_rows": self.row_group_rows, "compression": self.compression}
        if self.id_map.kind == "freq":
            from compactrec.data.convert.freq_count import counts_digest

            key["counts"] = counts_digest(self.id_map.counts_dir)  # type: ignore[arg-type]
        return key


def _check_options(out: Path, opts: ConvertOptions) -> None:
    path = out / MARKERS / "options.json"
    key = {"command": "convert", **opts.output_key()}
    if path.exists():
        old = json.loads(path.read_text())
        if old != key:
            raise ConvertError(f"{out} holds a conversion with other options ({old} != {key}); use another --out")
    else:
        atomic_write_json(path, key)


# ---- line counts of the inputs that are cut into splits -------------------------------
def _count_task(args: Tuple[Source, int, int], report: Report) -> List[int]:
    src, k, piece_bytes = args
    if src.gz:
        counts = count_lines_gz(src.path, piece_bytes)
    else:
        counts = [count_line_starts(src.path, k * piece_bytes, (k + 1) * piece_bytes)]
    report(src.size if src.gz else min(src.size, (k + 1) * piece_bytes) - k * piece_bytes, 0)
    return counts


def _line_counts(sources: List[Source], out: Path, opts: ConvertOptions) -> Dict[str, List[int]]:
    """Lines per piece of each input whose split rule needs the total (cached)."""
    result, tasks = {}, []
    for src in sources:
        if not split_rule(opts.split, src.stem).needs_line_count:
            continue
        cache = out / MARKERS / "lines" / f"{src.stem}.json"
        try:
            cached = json.loads(cache.read_text())
            if cached["input_size"] == src.size and cached["piece_bytes"] == opts.piece_bytes:
                result[src.stem] = cached["pieces"]
                continue
        except (OSError, ValueError, KeyError):
            pass
        n = 1 if src.gz else -(-src.size // opts.piece_bytes)
        tasks += [(src, k, opts.piece_bytes) for k in range(n)]
    if tasks:
        counted = run_tasks(_count_task, tasks, opts.workers, sum(t[0].size for t in tasks if t[1] == 0),
                            "count lines", opts.progress)
        for src in {t[0] for t in tasks}:
            pieces = [c for t, cs in zip(tasks, counted) if t[0] == src for c in cs]
            atomic_write_json(out / MARKERS / "lines" / f"{src.stem}.json",
                              {"input_size": src.size, "piece_bytes": opts.piece_bytes, "pieces": pieces})
            result[src.stem] = pieces
    return result


# ---- driver --------------------------------------------------------------------------------
def _jobs(sources: List[Source], out: Path, opts: ConvertOptions):
    lines = _line_counts(sources, out, opts)
    plan = plan_jobs(sources, out, opts.piece_bytes)
    jobs = []
    for src, k, skip in plan.todo:
        rule = split_rule(opts.split, src.stem)
        bases = None
        cuts = rule.cuts(0)
        if src.stem in lines:
            per_piece = lines[src.stem]
            bases = tuple(int(x) for x in np.concatenate([[0], np.cumsum(per_piece)]))
            cuts = rule.cuts(int(sum(per_piece)))
        job = PieceJob(src, k, str(out), opts.piece_bytes, opts.block_bytes, opts.on_error, skip, bases)
        jobs.append(ConvertJob(job, tuple(cuts), opts.id_map, opts.row_group_rows, opts.compression))
    return jobs, plan


def convert_criteo(inputs: Sequence[str], out_dir: str | Path, opts: ConvertOptions = ConvertOptions()) -> Manifest:
    """Convert ``inputs`` into ``out_dir`` (see module doc); returns the manifest written."""
    out = Path(out_dir)
    sources = [source(p) for p in inputs]
    stems = [s.stem for s in sources]
    if len(set(stems)) != len(stems):
        raise ConvertError(f"two inputs would write the same shards (names {sorted(stems)})")
    try:
        check_inputs(opts.split, stems)
    except ValueError as e:
        raise ConvertError(str(e)) from None
    if opts.on_error not in ("fail", "skip"):
        raise ConvertError(f"--on-error is {opts.on_error!r}; expected fail or skip")
    if (out / "_counts.json").exists():
        raise ConvertError(f"{out} holds frequency counts; convert into another folder")
    opts = _counted(sources, out, opts)
    IdMap(opts.id_map)  # fails now, in the driver, if a frequency map is missing
    _check_options(out, opts)
    jobs, plan = _jobs(sources, out, opts)
    new = run_tasks(convert_task, jobs, opts.workers, sum(s.size for s in sources), "convert",
                    opts.progress, plan.done_bytes)
    markers = plan.done + [m for ms in new for m in ms]
    for src in sources:
        if src.gz:
            pieces = 1 + max((m["piece"] for m in markers if m["stem"] == src.stem), default=-1)
            atomic_write_json(file_marker_path(out, src.stem), {"pieces": pieces, "input_size": src.size})
    manifest = _manifest(sources, out, markers, opts)
    write_manifest(out, manifest)
    return manifest


def _counted(sources: List[Source], out: Path, opts: ConvertOptions) -> ConvertOptions:
    """A frequency map without counts: count the inputs first into ``OUT/.convert/counts``
    (the training inputs only where whole files are held out: criteo_tb's day 23)."""
    spec = opts.id_map
    if spec.kind != "freq" or spec.counts_dir is not None:
        return opts
    from compactrec.data.convert.freq_count import count_criteo

    counts = out / MARKERS / "counts"
    train = [s.path for s in sources if not (opts.split == "criteo_tb" and s.stem == "day_23")] or [s.path for s in sources]
    count_criteo(train, str(counts), workers=opts.workers, piece_bytes=opts.piece_bytes, block_bytes=opts.block_bytes,
                 on_error=opts.on_error, progress=opts.progress)
    return replace(opts, id_map=replace(spec, counts_dir=str(counts)))


def _malformed(sources: List[Source], markers: List[Dict[str, Any]], opts: ConvertOptions) -> Dict[str, Any]:
    """Counts per input and the first examples with absolute line numbers."""
    by_file: Dict[str, int] = {}
    examples: List[Dict[str, Any]] = []
    for src in sources:
        mine = sorted((m for m in markers if m["stem"] == src.stem), key=lambda m: m["piece"])
        before = 0
        for m in mine:
            base = m["line_base"] if m["line_base"] is not None else before
            by_file[src.path] = by_file.get(src.path, 0) + m["bad"]["count"]
            for line, reason, text in m["bad"]["examples"]:
                if len(examples) < MAX_REPORTED:
                    examples.append({"file": src.path, "line": base + line, "reason": reason, "text": text})
            before = base + m["lines"]
    return {"count": sum(by_file.values()), "on_error": opts.on_error, "by_file": by_file, "examples": examples}


def _manifest(sources: List[Source], out: Path, markers: List[Dict[str, Any]], opts: ConvertOptions) -> Manifest:
    order = {s.stem: natural_key(s.stem) for s in sources}
    markers = sorted((m for m in markers if m["stem"] in order), key=lambda m: (order[m["stem"]], m["piece"]))
    stats = ColumnStats()
    splits: Dict[str, SplitInfo] = {}
    for m in markers:
        registers = np.load(out / MARKERS / "pieces" / f"{m['stem']}-part-{m['piece']:05d}.hll.npy")
        stats.merge(ColumnStats.from_json(m["stats"], registers))
        for split, shard in m["shards"].items():
            info = splits.setdefault(split, SplitInfo(files=[], rows=0))
            info.files.append(shard["file"])
            info.rows += shard["rows"]
    if not splits:
        raise ConvertError(f"no rows converted from {[s.path for s in sources]}")
    cards = [max(1, stats.cats[n]["max_id"] + 1) for n in SPARSE_NAMES]
    schema = FeatureSchema(LABEL, tuple(DENSE_NAMES), tuple(SparseFeature(n, c) for n, c in zip(SPARSE_NAMES, cards)))
    lines = {s.path: sum(m["lines"] for m in markers if m["stem"] == s.stem) for s in sources}
    summary = stats.summary()
    return Manifest(schema, splits, {
        "generator": {
            "kind": "criteo", "split": opts.split, "inputs": [{"path": s.path, "bytes": s.size, "lines": lines[s.path]} for s in sources],
            "piece_bytes": opts.piece_bytes, "row_group_rows": opts.row_group_rows, "compression": opts.compression,
        },
        "id_map": IdMap(opts.id_map).describe(),
        "dense_values": "raw integers as float32, empty -> null; the reader applies log(1 + max(x, 0)) (data.dense_transform)",
        "ctr": {k: v["clicks"] / v["rows"] for k, v in stats.splits.items() if v["rows"]},
        "columns": summary,
        "distinct": {
            "method": "hyperloglog", "precision": PRECISION, "relative_std_error": round(1.04 / 2 ** (PRECISION / 2), 4),
            "of": "non-empty raw values per feature, over all inputs",
            "estimates": {n: s["distinct_raw_estimate"] for n, s in summary["sparse"].items()},
        },
        "malformed": _malformed(sources, markers, opts),
    })
