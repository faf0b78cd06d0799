"""2 gloo ranks: a reader stopped at any of several steps and resumed from its cursor yields
exactly the rest of the uninterrupted stream (no loss, no duplicates); resuming 2 -> 1 and
1 -> 2 ranks reads every unread row once; unequal shards end at the same step on both ranks.

Every step runs an all_reduce, as training does: a rank that stopped early would leave the
other waiting in a collective. Instead of hanging, ``_lockstep`` lets a finished rank keep
answering with 0 until all are done, and counts the steps where the ranks disagreed.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
import torch.distributed as dist

from compactrec.sharding.env import all_gather_object, spawn
from tests.unit.test_reader import id_reader, rids, write_id_shards

B = 64
STOPS = (0, 1, 4, 9)


def _lockstep(batches) -> Tuple[List[List[int]], int]:
    """Row ids per batch, and the number of steps on which not every rank had a batch."""
    world, out, disagreements = dist.get_world_size(), [], 0
    for batch in batches:
        t = torch.tensor([1])
        dist.all_reduce(t)
        disagreements += int(t.item() != world)
        out.append(rids(batch))
    while True:  # done: answer 0 until every rank is done
        t = torch.tensor([0])
        dist.all_reduce(t)
        if t.item() == 0:
            return out, disagreements
        disagreements += 1


def _take(reader, epoch: int, n: int) -> Tuple[List[int], dict]:
    it = reader.epoch(epoch)
    seen = [i for _ in range(n) for i in rids(next(it))]
    cursor = json.loads(json.dumps(reader.cursor()))
    it.close()
    return seen, cursor


def _ranks(rank: int, world: int, files: List[str], unequal: List[str], out: str) -> None:
    try:
        _checks(rank, world, files, unequal, out)
    except BaseException:
        # Exit now: the spawner's closing barrier would wait for the other rank, which
        # may be blocked in a collective; the failed exit makes the spawner stop it.
        traceback.print_exc()
        os._exit(1)


def _checks(rank: int, world: int, files: List[str], unequal: List[str], out: str) -> None:
    torch.set_num_threads(1)
    result = {"disagreements": 0}
    full, d = _lockstep(id_reader(files, B, rank=rank, world_size=world).epoch(1))
    result["disagreements"] += d
    result["exact"] = []
    for stop in STOPS:  # same world size: exactly the rest of the uninterrupted stream
        _, cursor = _take(id_reader(files, B, rank=rank, world_size=world), 1, stop)
        same_cursor = len({json.dumps(c, sort_keys=True) for c in all_gather_object(cursor)}) == 1
        rest, d = _lockstep(id_reader(files, B, rank=rank, world_size=world).epoch(1, cursor=cursor))
        result["disagreements"] += d
        result["exact"].append(same_cursor and rest == full[stop:])

    # 2 -> 1: both ranks consume 3 steps; rank 0 alone reads the rest.
    seen, cursor = _take(id_reader(files, B, rank=rank, world_size=world), 0, 3)
    consumed = [i for part in all_gather_object(seen) for i in part]
    if rank == 0:
        alone = [i for bt in id_reader(files, B).epoch(0, cursor=cursor) for i in rids(bt)]
        result["2to1"] = consumed + alone
    # 1 -> 2: one rank consumed 5 steps (every rank can replay that alone); both read the rest.
    seen, cursor = _take(id_reader(files, B), 0, 5)
    rest, d = _lockstep(id_reader(files, B, rank=rank, world_size=world).epoch(0, cursor=cursor))
    result["disagreements"] += d
    result["1to2"] = seen + [i for part in all_gather_object(rest) for bt in part for i in bt]

    # unequal shards: the common step count, reached by both ranks, no disagreement
    reader = id_reader(unequal, B, rank=rank, world_size=world)
    batches, d = _lockstep(reader.epoch(0))
    result["disagreements"] += d
    result["unequal_steps"] = (len(batches), reader.num_steps(0))
    gathered = all_gather_object(result)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))


@pytest.mark.distributed
def test_resume_and_unequal_shards_on_two_ranks(tmp_path: Path):
    files = write_id_shards(tmp_path / "d", [900, 700, 450, 250], 200)
    unequal = write_id_shards(tmp_path / "u", [1000, 130, 40, 7], 100)
    out = tmp_path / "result.json"
    spawn(_ranks, 2, files, unequal, str(out))
    results = json.loads(out.read_text())
    total = 2300
    for r, res in enumerate(results):
        assert res["disagreements"] == 0, f"rank {r}: ranks disagreed on the step count"
        assert all(res["exact"]), f"rank {r}: resumed stream differs at stops {STOPS}: {res['exact']}"
        steps, expected = res["unequal_steps"]
        assert steps == expected > 0
    for key, new_world in (("2to1", 1), ("1to2", 2)):
        seen = results[0][key]
        assert len(seen) == len(set(seen)), f"{key}: a row was read twice"
        assert total - len(seen) < new_world * B, f"{key}: {total - len(seen)} rows lost"
