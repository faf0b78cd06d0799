"""Which rows each rank reads in an epoch, and the cursor that resumes an epoch exactly.

A *stream* is the ordered list of rows one rank reads in an epoch, as segments
``(gid, start, stop)``: positions ``[start, stop)`` of row group ``gid`` in its visiting
order (its rows permuted with ``(seed, epoch, gid)`` when shuffling, file order otherwise).
Batch k of a rank is rows ``[k B, (k + 1) B)`` of its stream. A *plan* is a small JSON-able
dict from which every rank derives every rank's stream using the footers alone:

- ``{"kind": "deal", "world_size": W}``: a fresh epoch. The split's row groups in the epoch's
  order (a seeded permutation when shuffling) are dealt round-robin: rank r gets
  ``order[r::W]``, each row group whole.
- ``{"kind": "resplit", "base": PLAN, "consumed": n, "world_size": W}``: resuming with another
  world size or batch size. Every stream of ``base`` loses its first ``n`` rows (what each old
  rank had consumed); the rest, concatenated in old-rank order, is cut into W contiguous
  parts of equal size (+-1 row). Every row not yet consumed is read by exactly one new rank;
  training then drops only each new rank's last partial batch.

Steps per epoch follow from the streams' lengths, so all ranks agree without a collective:
train ``min_r floor(rows_r / B)``, eval ``max_r ceil(rows_r / B)`` (padded).

A ``Cursor`` is the reader's position after a step: the plan, the steps consumed under it,
the world and batch size that consumed them, a fingerprint of the data (the cursor is
refused for other data or another seed), and, for people and logs, each rank's next row as
``(shard, row group, offset in visiting order)``.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

Segment = Tuple[int, int, int]  # (gid, start, stop) in the row group's visiting order
Stream = List[Segment]
CURSOR_VERSION = 1


@dataclass(frozen=True)
class RowGroupRef:
    file: str
    index: int  # row group within the file
    rows: int
    gid: int  # position in the split's list of all row groups (seeds the row shuffle)


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> List[int]:
    """The epoch's order of the split's row groups (gids)."""
    if not shuffle:
        return list(range(n))
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def deal_plan(world_size: int) -> Dict[str, Any]:
    return {"kind": "deal", "world_size": world_size}


def resplit_plan(base: Dict[str, Any], consumed: int, world_size: int) -> Dict[str, Any]:
    return {"kind": "resplit", "base": base, "consumed": consumed, "world_size": world_size}


def streams(plan: Dict[str, Any], rows: Sequence[int], order: Sequence[int]) -> List[Stream]:
    """Every rank's stream under ``plan``; ``rows[gid]`` row counts, ``order`` the epoch order."""
    kind = plan.get("kind")
    if kind == "deal":
        w = int(plan["world_size"])
        return [[(g, 0, rows[g]) for g in order[r::w]] for r in range(w)]
    if kind == "resplit":
        rest = [skip(s, int(plan["consumed"])) for s in streams(plan["base"], rows, order)]
        return cut([seg for s in rest for seg in s], int(plan["world_size"]))
    raise ValueError(f"unknown reader plan kind {kind!r}")


def stream_rows(stream: Stream) -> int:
    return sum(b - a for _, a, b in stream)


def skip(stream: Stream, n: int) -> Stream:
    """``stream`` without its first ``n`` rows."""
    out: Stream = []
    for g, a, b in stream:
        if n >= b - a:
            n -= b - a
            continue
        out.append((g, a + n, b))
        n = 0
    return out


def cut(stream: Stream, parts: int) -> List[Stream]:
    """``stream`` cut into ``parts`` contiguous streams of sizes differing by at most one."""
    total = stream_rows(stream)
    sizes = [total // parts + (1 if r < total % parts else 0) for r in range(parts)]
    out: List[Stream] = []
    segs = list(stream)
    i = 0
    for size in sizes:
        part: Stream = []
        while size > 0:
            g, a, b = segs[i]
            take = min(size, b - a)
            part.append((g, a, a + take))
            size -= take
            if a + take == b:
                i += 1
            else:
                segs[i] = (g, a + take, b)
        out.append(part)
    return out


def count_steps(all_streams: Sequence[Stream], batch_size: int, pad_last: bool) -> int:
    rows = [stream_rows(s) for s in all_streams]
    if pad_last:
        return max(-(-n // batch_size) for n in rows)
    return min(n // batch_size for n in rows)


def locate(stream: Stream, n: int) -> Optional[Tuple[int, int]]:
    """``(gid, offset)`` of row ``n`` of the stream; None past its end."""
    for g, a, b in stream:
        if n < b - a:
            return g, a + n
        n -= b - a
    return None


def fingerprint(refs: Sequence[RowGroupRef], seed: int, shuffle: bool) -> Dict[str, Any]:
    """What a cursor must agree with: the row groups (by shard name and size), seed, shuffle."""
    text = ";".join(f"{r.file.rsplit('/', 1)[-1]}:{r.index}:{r.rows}" for r in refs)
    return {
        "row_groups": len(refs),
        "rows": sum(r.rows for r in refs),
        "digest": zlib.crc32(text.encode()),
        "seed": seed,
        "shuffle": shuffle,
    }


@dataclass(frozen=True)
class Cursor:
    """The reader's position after ``step`` batches of ``epoch`` (see the module doc)."""

    epoch: int
    step: int  # batches consumed in this epoch, all plans together
    plan: Dict[str, Any]
    plan_step: int  # batches consumed under ``plan``
    plan_steps: int  # batches ``plan`` yields in all (its epoch is over at plan_step == plan_steps)
    world_size: int
    batch_size: int
    data: Dict[str, Any]
    positions: List[Optional[Dict[str, Any]]]  # per rank: next row, None when none is left
    version: int = CURSOR_VERSION

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "Cursor":
        try:
            if d.get("version") != CURSOR_VERSION:
                raise ValueError(f"version {d.get('version')!r}, expected {CURSOR_VERSION}")
            return Cursor(**d)
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a reader cursor: {e}") from None

    @property
    def finished(self) -> bool:
        return self.plan_step >= self.plan_steps
