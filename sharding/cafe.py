"""CAFE across ranks: one HotSketch partitioned over the ranks, co-located with the hot table.

TorchRec shards CAFE's ``EmbeddingBagCollection`` like any other (DMP); this module makes the
sketch agree across ranks, as TorchRec's managed-collision modules do for their remapping:

- ownership: the hot table ``cafe_hot`` is sharded row-wise (or table-wise); rank r owns the
  hot slots of its row shard [s0, s1) and the sketch buckets [W * s0 / H, W * s1 / H) of the
  W buckets, so every promotion it makes lands in a row it holds;
- query: each id is sent to the owner of its bucket (``all_to_all``), answered there, sent
  back: every rank gets the same id -> slot answer;
- insert: (id, importance) pairs go to the owners; importance is normalised by the GLOBAL
  mean; the shards run the same number of rounds and decay on the summed score, so together
  they behave like one sketch fed the global batch (each shard hands out its own slots only);
- migration: a promoted id's current hash embedding (the sum over levels of its hash rows) is
  read from the ranks holding those rows (``HashRowReader``: the row requests go to the
  shards' owners in one exchange, each owner reads its local shard, the pieces come back and
  are summed) and written into the owner's hot row. On one rank nothing is exchanged. An
  earlier version ran a whole no-grad lookup through the sharded EBC instead (input dist,
  every table's TBE, output dist): on 2 ranks at batch 128 that was a third of CAFE's step;
- checkpoint: the shard's buffers appear in ``state_dict`` as ``ShardedTensor`` s over
  buckets / slots, so torch.distributed.checkpoint saves and reshards them with the tables.

Attach with ``attach_sharded_cafe(dmp_model)`` right after ``DistributedModelParallel``.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardedTensorMetadata
from torch.distributed._shard.sharded_tensor.metadata import TensorProperties

from compactrec.embeddings.base import kjt_from
from compactrec.embeddings.cafe import HOT_TABLE, CafeEmbedding, hash_table
from compactrec.embeddings.hotsketch import HotSketch, rebuild_free
from compactrec.hashing import hash_mod

HOT_TABLE_TYPES = ["row_wise", "table_wise"]  # the hot rows must be whole on their owner
_SHARDED_BUFFERS = {"keys": "buckets", "scores": "buckets", "hot": "buckets", "owner": "slots"}


class _PGSync:
    """``RoundSync`` over a process group: all shards run as many rounds as the busiest.
    Collectives run on ``device``, the group's (an NCCL group takes CUDA tensors only)."""

    def __init__(self, pg: Optional[dist.ProcessGroup], device: torch.device) -> None:
        self.pg, self.device = pg, device
        self.alone = dist.get_world_size(pg) == 1  # one rank: the reductions are the identity

    def max(self, value: int) -> int:
        if self.alone:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.pg)
        return int(t)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over the shards (float64, same shape): one all_reduce per call."""
        t = value.detach().to(torch.float64).clone()
        if not self.alone:
            dist.all_reduce(t, group=self.pg)
        return t


def _exchange(values: torch.Tensor, dest: torch.Tensor, world: int, pg) -> Tuple[torch.Tensor, torch.Tensor, List[int], List[int]]:
    """Send values[i] to rank dest[i]. Returns (received, send order, send counts, recv counts)."""
    order = torch.sort(dest, stable=True).indices
    send = torch.bincount(dest, minlength=world)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=pg)
    send_l, recv_l = send.tolist(), recv.tolist()
    out = values.new_empty((sum(recv_l),) + tuple(values.shape[1:]))
    dist.all_to_all_single(out, values[order].contiguous(), recv_l, send_l, group=pg)
    return out, order, send_l, recv_l


def _send_back(values: torch.Tensor, order: torch.Tensor, send: List[int], recv: List[int], pg) -> torch.Tensor:
    """Inverse of ``_exchange``: answers for the received items, back in the sender's order."""
    out = values.new_empty((sum(send),) + tuple(values.shape[1:]))
    dist.all_to_all_single(out, values.contiguous(), send, recv, group=pg)
    result = torch.empty_like(out)
    result[order] = out
    return result


class ShardedCafeSketch:
    """The rank's part of one HotSketch and the collectives around it (see module doc)."""

    def __init__(self, module: CafeEmbedding, slot_ranges: List[Tuple[int, int]], hot_shard: torch.Tensor,
                 pg: Optional[dist.ProcessGroup] = None, state: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """``state``: ``module.ebc.state_dict()`` when the caller has it (built once at attach)."""
        self.module, self.pg = module, pg
        self.device = module._starts_t.device  # the module's device (a buffer: follows .to())
        self.rank, self.world = dist.get_rank(pg), dist.get_world_size(pg)
        plan, cfg = module.plan, module.cfg
        self.total_buckets, self.total_slots = plan.buckets, plan.hot_rows
        self.slot_ranges = slot_ranges
        self.bucket_ranges = [
            (plan.buckets * s0 // plan.hot_rows, plan.buckets * s1 // plan.hot_rows) for s0, s1 in slot_ranges
        ]
        self.bucket_starts = torch.tensor([b0 for b0, _ in self.bucket_ranges] + [plan.buckets], device=self.device)
        self.slot_starts = torch.tensor([lo for lo, _ in slot_ranges[1:]] or [0], dtype=torch.int64, device=self.device)
        (b0, b1), (s0, s1) = self.bucket_ranges[self.rank], slot_ranges[self.rank]
        self.slot_offset = s0
        self.local = HotSketch(
            b1 - b0, s1 - s0, cfg.threshold, cfg.slots, cfg.decay, cfg.seed,
            total_buckets=plan.buckets, bucket_offset=b0, device=self.device,
        )
        self.hot_shard = hot_shard  # (s1 - s0, dim) view of this rank's rows of cafe_hot
        self.sync = _PGSync(pg, self.device)
        self.hash_rows = HashRowReader(module, module.ebc.state_dict() if state is None else state, self.rank, pg)

    def owner_of(self, keys: torch.Tensor) -> torch.Tensor:
        bucket = hash_mod(keys, self.total_buckets, self.module.cfg.seed)
        return torch.bucketize(bucket, self.bucket_starts[1:], right=True)

    def query(self, keys: torch.Tensor) -> torch.Tensor:
        """Global hot slot per key (-1: not hot); the same answer on every rank."""
        if self.world == 1:  # one rank owns every bucket: no exchange (the same answer)
            return self.local.query(keys)
        got, order, send, recv = _exchange(keys, self.owner_of(keys), self.world, self.pg)
        slots = self.local.query(got)
        slots = torch.where(slots >= 0, slots + self.slot_offset, slots)
        return _send_back(slots, order, send, recv, self.pg)

    def mean(self, scores: torch.Tensor) -> torch.Tensor:
        """Mean of the importance over every rank's occurrences."""
        if self.world == 1:  # the same float64 sum / count as the reduction below
            total = scores.sum(dtype=torch.float64)
            return (total / max(scores.numel(), 1)).to(torch.float32)
        t = torch.stack([scores.sum().to(torch.float64), scores.new_tensor(scores.numel(), dtype=torch.float64)])
        dist.all_reduce(t, group=self.pg)
        # no host sync: an empty global batch gives 0 (the caller then inserts nothing)
        return torch.where(t[1] > 0, t[0] / t[1].clamp(min=1), t.new_zeros(())).to(torch.float32)

    @torch.no_grad()
    def update(self, keys: torch.Tensor, scores: torch.Tensor) -> int:
        """Insert (key, score) pairs on their owners, migrate promoted rows; returns the
        number of promotions on this rank. Collective: every rank calls it, in step."""
        if self.world == 1:  # no exchange, and the sketch's host-side round loop (same arithmetic)
            pk, ps, _, _ = self.local.insert(keys, scores)
            self._migrate(pk, ps)
            return pk.numel()
        packed = torch.stack([keys.to(torch.float64), scores.to(torch.float64)], 1)  # one exchange
        got, _, _, _ = _exchange(packed, self.owner_of(keys), self.world, self.pg)
        pk, ps, _, _ = self.local.insert(got[:, 0].to(torch.int64), got[:, 1].to(torch.float32), sync=self.sync)
        self._migrate(pk, ps)
        return pk.numel()

    @torch.no_grad()
    def rehome(self) -> int:
        """After loading a checkpoint saved on another partition: hot ids whose (global) slot
        now belongs to another rank get a slot of this rank, with their row copied over; the
        old slots are freed on their owners. Collective. Returns the ids re-homed here."""
        none = torch.zeros(0, dtype=torch.int64, device=self.device)
        flat, old = getattr(self, "foreign", (none, none))
        self.foreign = (flat[:0], old[:0])
        if self.sync.max(flat.numel()) == 0:
            return 0
        rows = self._read_hot_rows(old)  # before any slot is reused
        owner_rank = torch.bucketize(old, self.slot_starts, right=True)
        freed, _, _, _ = _exchange(old, owner_rank, self.world, self.pg)
        local = self.local
        local.owner[freed - self.slot_offset] = -1
        rebuild_free(local)
        n = min(flat.numel(), int(local.free_count))
        top = int(local.free_count)
        slots = local.free[top - n : top].flip(0).long()  # lowest free slots first
        local.free_count -= n
        keys = local.keys.view(-1)[flat[:n]]
        local.hot.view(-1)[flat[:n]] = slots.to(local.hot.dtype)
        local.owner[slots] = keys
        if n:
            self.hot_shard[slots] = rows[:n].to(self.hot_shard.dtype)
        return n  # beyond the free slots, ids stay in the sketch but are no longer hot

    def _lookup(self, bags: Dict[str, Tuple[torch.Tensor, torch.Tensor]], p: int) -> Dict[str, torch.Tensor]:
        """One collective lookup through the sharded EBC: every rank sends the same keys with
        ``p`` bags each (``bags`` fills some keys; the rest stay empty). Pooled (p, dim) per key."""
        m = self.module
        empty = (torch.zeros(0, dtype=torch.int64, device=self.device), torch.zeros(p, dtype=torch.int32, device=self.device))
        return m.ebc(kjt_from({k: bags.get(k, empty) for k in m._kjt_keys})).to_dict()

    def _read_hot_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """Rows ``slots`` (global ids) of the hot table, wherever they live: (n, dim). Collective."""
        p = self.sync.max(slots.numel())
        lengths = torch.zeros(p, dtype=torch.int32, device=self.device)
        lengths[: slots.numel()] = 1
        hot_key = f"{self.module.compressed[0].name}__hot"  # every feature's hot key reads the one hot table
        return self._lookup({hot_key: (slots, lengths)}, p)[hot_key][: slots.numel()]

    def _migrate(self, keys: torch.Tensor, local_slots: torch.Tensor) -> None:
        """Hot rows <- the promoted ids' current hash embeddings (the sum over levels of their
        hash rows), read from whichever ranks hold those rows. Collective."""
        if self.sync.max(keys.numel()) == 0:
            return
        values = self.hash_rows.read(*self.module.key_hash_rows(keys))
        if keys.numel():
            self.hot_shard[local_slots] = values.to(self.hot_shard.dtype)

    # ------------------------------------------------------------------------ checkpoint
    def _metadata(self, name: str, t: torch.Tensor) -> ShardedTensorMetadata:
        ranges = self.bucket_ranges if _SHARDED_BUFFERS[name] == "buckets" else self.slot_ranges
        total = self.total_buckets if _SHARDED_BUFFERS[name] == "buckets" else self.total_slots
        tail = list(t.shape[1:])
        shards = [
            ShardMetadata([lo] + [0] * len(tail), [hi - lo] + tail, f"rank:{r}/{t.device.type}")
            for r, (lo, hi) in enumerate(ranges)
            if hi > lo
        ]
        props = TensorProperties(dtype=t.dtype, layout=t.layout, requires_grad=False, memory_format=torch.contiguous_format)
        return ShardedTensorMetadata(shards, torch.Size([total] + tail), props)

    def sharded_state(self) -> Dict[str, ShardedTensor]:
        """The shard's buffers as ShardedTensors over global buckets / slots. Views (loading
        into them fills the buffers), except ``hot``: a copy holding GLOBAL slot ids, so a
        checkpoint means the same under any partition."""
        out = {}
        for name, kind in _SHARDED_BUFFERS.items():
            t = getattr(self.local, name)
            if name == "hot":
                t = torch.where(t >= 0, t + self.slot_offset, t)
            lo = (self.bucket_ranges if kind == "buckets" else self.slot_ranges)[self.rank][0]
            shards = [Shard.from_tensor_and_offsets(t, [lo] + [0] * (t.dim() - 1), self.rank)] if t.shape[0] else []
            out[name] = ShardedTensor._init_from_local_shards_and_global_metadata(
                shards, self._metadata(name, t), process_group=self.pg
            )
        out["inserted"] = self.local.inserted  # the same on every rank (decay is global)
        return out


def _state_hook(module: CafeEmbedding, state: Dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state if k.startswith(prefix + "sketch.")]:
        del state[key]
    for name, value in module.router.sharded_state().items():  # type: ignore[union-attr]
        state[prefix + "sketch." + name] = value


def _load_hook(module: CafeEmbedding, state: Dict, prefix: str, *args) -> None:
    """Accept ShardedTensor (DCP) or full tensors for the sketch; copy the local rows.
    Hot slots come as global ids: those in this rank's slot range become local ids; the
    others (the run was saved on another partition) wait for ``after_load`` to re-home them."""
    router: ShardedCafeSketch = module.router  # type: ignore[assignment]
    for name, kind in _SHARDED_BUFFERS.items():
        key = prefix + "sketch." + name
        if key not in state:
            continue
        value, target = state[key], getattr(router.local, name)
        if isinstance(value, ShardedTensor):
            local = value.local_shards()[0].tensor if value.local_shards() else target[:0]
        else:
            lo, hi = (router.bucket_ranges if kind == "buckets" else router.slot_ranges)[router.rank]
            local = value[lo:hi]
        if name == "hot":
            s0, s1 = router.slot_ranges[router.rank]
            own = (local >= s0) & (local < s1)
            foreign = (local >= 0) & ~own
            router.foreign = (torch.nonzero(foreign.reshape(-1)).squeeze(1), local.reshape(-1)[foreign.reshape(-1)].long())
            local = torch.where(own, local - s0, torch.full_like(local, -1)).to(target.dtype)
        state[key] = local
    for name in ("free", "free_count"):  # rebuilt from owner after the load
        state.setdefault(prefix + "sketch." + name, getattr(router.local, name))


def after_load(model: nn.Module) -> int:
    """After a checkpoint load: re-home hot ids whose slots moved to another rank (only when
    the partition changed). Collective under DMP. Returns the ids re-homed on this rank."""
    return sum(m.router.rehome() for m in model.modules() if isinstance(m, CafeEmbedding) and m.router is not None)


def _hot_shard(module: CafeEmbedding, state: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, int, int]:
    """This rank's rows of the hot table (``state``: ``module.ebc.state_dict()``): (view, first row, row count)."""
    st = state[f"embedding_bags.{HOT_TABLE}.weight"]
    if not isinstance(st, ShardedTensor):
        raise RuntimeError("cafe_hot is not sharded: attach_sharded_cafe runs after DMP")
    shards = st.local_shards()
    if not shards:
        return module._starts_t.new_empty((0, module.dim), dtype=torch.float32), 0, 0
    if len(shards) > 1 or shards[0].metadata.shard_sizes[1] != module.dim:
        raise RuntimeError(f"{HOT_TABLE} must be sharded {HOT_TABLE_TYPES} (whole rows on one rank)")
    md = shards[0].metadata
    return shards[0].tensor, md.shard_offsets[0], md.shard_sizes[0]


def attach_sharded_cafe(model: nn.Module, pg: Optional[dist.ProcessGroup] = None) -> int:
    """Give every CafeEmbedding inside a DMP-wrapped ``model`` a sharded sketch. Returns how many."""
    count = 0
    for module in model.modules():
        if not isinstance(module, CafeEmbedding) or module.sketch is None:
            continue
        state = module.ebc.state_dict()  # one build for the hot shard and the hash row reader
        view, start, rows = _hot_shard(module, state)
        ranges = [None] * dist.get_world_size(pg)
        dist.all_gather_object(ranges, (start, start + rows), group=pg)
        ranges = [(lo, hi) if hi > lo else (0, 0) for lo, hi in ranges]
        covered = sorted(r for r in ranges if r[1] > r[0])
        if [lo for lo, _ in covered][1:] != [hi for _, hi in covered][:-1] or covered[-1][1] != module.plan.hot_rows:
            raise RuntimeError(f"{HOT_TABLE} row shards {ranges} do not tile [0, {module.plan.hot_rows})")
        ranges = [(lo, hi) if hi > lo else (_empty_at(ranges, r),) * 2 for r, (lo, hi) in enumerate(ranges)]
        router = ShardedCafeSketch(module, ranges, view, pg, state)
        module.sketch = router.local
        module.router = router
        module._register_state_dict_hook(_state_hook)
        module._register_load_state_dict_pre_hook(_load_hook, with_module=True)
        count += 1
    return count


class HashRowReader:
    """Reads rows of CAFE's hash tables wherever DMP put them (any sharding type).

    At attach, every shard of every hash table ``cafe_hash_{f}_{l}`` is listed from the
    ShardedTensor metadata (the same list on every rank: table, rows [r0, r1), columns from
    c0, owner rank), and this rank keeps views of its own shards (views into the TBE weights,
    which the fused optimizer updates in place). ``read`` sends each (id, level) row request to
    the shards that cover that row (one shard per row for table-/row-wise, one per column
    block for column-wise), each owner copies its columns into a zero (n, dim) row, and the
    pieces come back and are summed per id: over column blocks and levels in one index_add.
    Collective: 3 ``all_to_all`` (none on one rank)."""

    def __init__(self, module: CafeEmbedding, state: Dict[str, torch.Tensor], rank: int,
                 pg: Optional[dist.ProcessGroup]) -> None:
        """``state``: ``module.ebc.state_dict()`` (ShardedTensors after DMP)."""
        self.pg, self.world, self.levels, self.dim = pg, dist.get_world_size(pg), module.cfg.levels, module.dim
        device = module._starts_t.device
        shards: List[List[int]] = []  # per shard: table index (feature-major, level-minor), r0, r1, c0, c1, owner
        self.local: Dict[int, torch.Tensor] = {}  # shard index -> this rank's view of it
        names = [hash_table(f.name, l) for f in module.compressed for l in range(self.levels)]
        with warnings.catch_warnings():  # torch's ShardedTensor deprecation notice: TorchRec's state is one
            warnings.simplefilter("ignore", FutureWarning)
            for ti, name in enumerate(names):
                st = state[f"embedding_bags.{name}.weight"]
                if not isinstance(st, ShardedTensor):  # an unsharded module on one rank (device audit): one whole shard
                    if self.world > 1:
                        raise RuntimeError(f"{name} is not sharded: attach_sharded_cafe runs after DMP")
                    self.local[len(shards)] = st
                    shards.append([ti, 0, st.shape[0], 0, st.shape[1], rank])
                    continue
                mine = {tuple(sh.metadata.shard_offsets): sh.tensor for sh in st.local_shards()}
                for md in st.metadata().shards_metadata:
                    (r0, c0), (nr, nc) = md.shard_offsets, md.shard_sizes
                    owner = md.placement.rank()  # type: ignore[union-attr]
                    if owner == rank:
                        self.local[len(shards)] = mine[(r0, c0)]
                    shards.append([ti, r0, r0 + nr, c0, c0 + nc, owner])
        cols = torch.tensor(shards, dtype=torch.int64, device=device)
        self.r0, self.r1, self.owner = cols[:, 1], cols[:, 2], cols[:, 5]
        self.count = torch.bincount(cols[:, 0], minlength=len(names))  # shards per table, listed table by table
        self.first = torch.cumsum(self.count, 0) - self.count
        self.columns = [(c0, c1) for _, _, _, c0, c1, _ in shards]  # host copies for the owner's reads

    def read(self, fidx: torch.Tensor, level_rows: List[torch.Tensor]) -> torch.Tensor:
        """fidx (n,) compressed-feature index, level_rows[l] (n,) hash rows -> (n, dim) fp32,
        the sum over levels of those rows. Collective (every rank calls it, any n)."""
        n, L = fidx.numel(), self.levels
        key = torch.arange(n, device=fidx.device).repeat(L)  # (n L,) requests, level-major
        table = torch.cat([fidx * L + l for l in range(L)])
        row = torch.cat(level_rows)
        # every (request, shard of its table) pair, kept where the shard holds the row
        cnt = self.count[table]
        req = torch.repeat_interleave(torch.arange(table.numel(), device=fidx.device), cnt)
        shard = self.first[table][req] + torch.arange(req.numel(), device=fidx.device) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        hit = (self.r0[shard] <= row[req]) & (row[req] < self.r1[shard])
        req, shard = req[hit], shard[hit]
        ask = torch.stack([shard, row[req] - self.r0[shard]], 1)  # (m, 2): shard, row inside it
        if self.world > 1:
            got, order, send, recv = _exchange(ask, self.owner[shard], self.world, self.pg)
        else:
            got = ask
        pieces = torch.zeros(got.shape[0], self.dim, dtype=torch.float32, device=fidx.device)
        for s in torch.unique(got[:, 0]).tolist():  # this rank's shards that were asked for
            sel = torch.nonzero(got[:, 0] == s).squeeze(1)
            c0, c1 = self.columns[s]
            pieces[sel, c0:c1] = self.local[s][got[sel, 1]].float()
        if self.world > 1:
            pieces = _send_back(pieces, order, send, recv, self.pg)
        # level-major, column blocks disjoint: each value adds its levels in order (as the old sum)
        return torch.zeros(n, self.dim, dtype=torch.float32, device=fidx.device).index_add_(0, key[req], pieces)


def _empty_at(ranges: List[Tuple[int, int]], rank: int) -> int:
    """Where an empty range sits so bucket ranges stay ordered: the end of the ranks before."""
    return max([hi for lo, hi in ranges[:rank] if hi > lo], default=0)
