"""GPU check of the kernels: parity with the PyTorch references, then timings, as one JSON file.

    python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json      # on a CUDA machine, from the repo root
    make gpu-check PYTHON=python3 OUT=$OUT                          # the same through make
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --device cpu --tiny   # smoke test, no GPU (seconds)

Runs from the raw working tree: nothing is installed, and it imports only torch, triton,
numpy, ``compactrec.kernels`` (+ ``compactrec.hashing``) and ``compactrec.trainer.pairwise_dots``
(torch/numpy only), so a machine with a CUDA torch and Triton but no TorchRec / FBGEMM / Ray /
OmegaConf runs it.
(a) ``compactrec.kernels`` resolves to ./kernels: the repo root goes on sys.path and onto
    ``compactrec.__path__`` (setup.py maps the top-level folders to ``compactrec.<folder>``;
    ``compactrec/__init__.py`` imports nothing).
(b) Parity on the device, compiled Triton (not the interpreter; it refuses TRITON_INTERPRET=1
    on CUDA): every op, old (hash_scale_bag, qr_bag, mixed_dim_bag, robe_bag) and new (scale_pool,
    qr_compose_pool, project_sum, hash_remap, robe_rows), triton and cpu backends against the
    reference, output and every gradient, fp32 and bf16, odd shapes (empty bags, a long bag,
    d not a power of two, one-hot bags; with --tiny only the small cases). Outputs are
    poisoned (NaN) so an element a kernel never writes fails. On CUDA the cases run in
    --workers processes (Triton compiles hundreds of kernel variants, ~1 s of a core each;
    a crashed worker is reported as a failed check, not a crashed run). Also: each public op dispatches to triton under
    ``auto`` and is counted by ``calls()``; and whether one training step of each op's
    Triton path is free of host syncs (``torch.cuda.set_sync_debug_mode``; informational).
(c) Timings (``triton.testing.do_bench`` medians; perf_counter medians on CPU) of each op's
    forward and backward at a realistic shape (default B=16384, pooling 25, d=128, fp32)
    for the triton and reference backends beside ``F.embedding_bag`` (table of --rows
    rows) as the baseline, with the fraction of the measured copy bandwidth (a 1 GiB
    ``copy_``) each reaches, from the traffic models in the kernel docstrings (written out
    beside each case in ``timing_cases``; fp32 element sizes).
(d) The trainer's DLRM interaction (``PairwiseDots``, ``compactrec.trainer.pairwise_dots``,
    torch only) against autograd through TorchRec's formula: parity, then timings.
(e) Writes everything to --out as JSON (after parity, then again at the end: a run cut off
    while timing keeps its parity result), prints a short table; exit code 1 if any parity
    check fails.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[1]
OLD_OPS = ["hash_scale_bag", "qr_bag", "mixed_dim_bag", "robe_bag"]
NEW_OPS = ["scale_pool", "qr_compose_pool", "project_sum", "hash_remap", "robe_rows"]
OPS = OLD_OPS + NEW_OPS
FOLDER = {"hash_scale_bag": "hash_scale", "qr_bag": "qr", "mixed_dim_bag": "mixed_dim", "scale_pool": "row_scale",
          "qr_compose_pool": "qr_compose", "project_sum": "projection", "hash_remap": "remap", "robe_bag": "robe",
          "robe_rows": "robe"}
ROBE_P, ROBE_MULT_ID, ROBE_MULT_BLOCK = 2**31 - 1, 1_103_515_245, 12_345_679  # the hash prime; arbitrary in [1, P)
ODD_LENGTHS = [0, 1, 3, 0, 37, 2, 1, 1, 5, 0, 12, 1, 0]  # empty at both ends and inside, one long bag


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_check.json", help="the JSON report")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="cpu: the Triton kernels under the interpreter (set TRITON_INTERPRET=1; a smoke test)")
    p.add_argument("--tiny", action="store_true", help="small shapes only (the smoke test)")
    p.add_argument("--batch", type=int, default=16384)
    p.add_argument("--pooling", type=int, default=25, help="mean bag length (lengths are U[0, 2*pooling])")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--rows", type=int, default=1_000_000, help="embedding_bag baseline / hashed table rows")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--workers", type=int, default=None,
                   help="parity processes (default on CUDA: up to 12, CPU cores - 2; on CPU 1 = in this process)")
    p.add_argument("--parity-timeout", type=float, default=240, help="seconds for all parity workers together")
    p.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # i/n: a worker's share of the parity cases
    a = p.parse_args(argv)
    if a.tiny:
        a.batch, a.pooling, a.dim, a.rows = min(a.batch, 64), min(a.pooling, 4), min(a.dim, 16), min(a.rows, 1000)
    return a


def bootstrap(device: str) -> None:
    """Make ``compactrec.kernels`` importable from the raw tree, with the right Triton mode."""
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernel modules are imported
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("gpu_check: TRITON_INTERPRET is set: unset it to check the compiled kernels on CUDA")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import compactrec

    if str(ROOT) not in list(compactrec.__path__):
        compactrec.__path__.append(str(ROOT))  # compactrec.kernels -> ./kernels (setup.py's package_dir)
    import compactrec.kernels as k

    where = Path(k.__file__).resolve().parent
    if where != ROOT / "kernels":
        print(f"# warning: compactrec.kernels comes from {where}, not {ROOT / 'kernels'}")


# ---------------------------------------------------------------- inputs
class Inputs:
    """Random inputs on the device, drawn on the CPU from one generator (same on every machine)."""

    def __init__(self, dev, seed: int = 0):
        import torch

        self.torch, self.dev = torch, dev
        self.gen = torch.Generator().manual_seed(seed)

    def leaf(self, shape, dtype, around: float = 0.0):
        t = self.torch
        return (t.randn(shape, generator=self.gen) + around).to(dtype).to(self.dev).requires_grad_(True)

    def grad(self, shape, dtype):
        return self.torch.randn(shape, generator=self.gen).to(dtype).to(self.dev)

    def ints(self, high: int, n: int, dtype=None):
        t = self.torch
        return t.randint(0, high, (n,), generator=self.gen).to(dtype or t.int64).to(self.dev)

    def offsets(self, lengths: Sequence[int]):
        t = self.torch
        return t.tensor([0] + list(lengths), dtype=t.int64).cumsum(0).to(self.dev)

    def lengths(self, b: int, pooling: int) -> List[int]:
        return self.torch.randint(0, 2 * pooling + 1, (b,), generator=self.gen).tolist()


def bag_sets(tiny: bool, inp: Inputs) -> Dict[str, List[int]]:
    sets = {"odd": ODD_LENGTHS, "one-hot": [1] * 40}  # one-hot: one id per bag (BLOCK_N = 1 tiles)
    if not tiny:  # several programs per launch on a GPU (its tiles are smaller than the interpreter's)
        medium = inp.lengths(300, 20)
        medium[0], medium[7] = 0, 300
        sets["medium"] = medium
    return sets


# ---------------------------------------------------------------- parity
def op_module(op: str, backend: str):
    return importlib.import_module(f"compactrec.kernels.{FOLDER[op]}.{backend}")


def forward_backward(fn: Callable, params: Sequence, grad_out) -> list:
    import torch

    out = fn()
    grads = torch.autograd.grad(out, list(params), grad_out, allow_unused=True)
    return [out, *grads]


def tolerance(dtype):
    import torch

    # as tests/kernels/cases.py: fp32 a few ulp of sums; bf16 two roundings of an fp32 result
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


def compare(got: list, want: list, names: Sequence[str], dtype, exact: bool = False) -> Dict:
    import torch

    errors, problems = {}, []
    for name, g, w in zip(names, got, want):
        if g is None or w is None:
            problems.append(f"{name}: missing")
            continue
        if g.dtype != w.dtype or g.shape != w.shape:
            problems.append(f"{name}: {g.dtype} {tuple(g.shape)} vs {w.dtype} {tuple(w.shape)}")
            continue
        if exact:
            bad = int((g != w).sum())
            errors[name] = bad
            if bad:
                problems.append(f"{name}: {bad} elements differ")
            continue
        g32, w32 = g.detach().float(), w.detach().float()
        if not bool(torch.isfinite(g32).all()):
            problems.append(f"{name}: non-finite (an element never written?)")
            continue
        errors[name] = float((g32 - w32).abs().max()) if g.numel() else 0.0
        # norm-wise, as GEMM tests bound: a sum's rounding error scales with its terms, not with
        # its result, so an element-wise rtol fails sums that cancel (a 300-id bag, a projection
        # gradient over 1000 bags: fp32 errors ~5e-5 beside values ~50 seen on an H200)
        tol = tolerance(dtype)
        allowed = tol["atol"] + tol["rtol"] * (float(w32.abs().max()) if w.numel() else 0.0)
        if errors[name] > allowed:
            problems.append(f"{name}: max |diff| {errors[name]:.3g} over {allowed:.3g} (atol + rtol * max |want|)")
    return dict(ok=not problems, max_abs_err=errors, problems=problems)


def parity_cases(inp: Inputs, tiny: bool, dims: Sequence[int] = ()):
    """Yield (op, case label, dtype, call(mod) -> [out, *grads], names, exact)."""
    torch = inp.torch
    sets = bag_sets(tiny, inp)
    dims = list(dims) or ([13] if tiny else [13, 128])
    dtypes = [torch.float32, torch.bfloat16]
    for (bag_name, lengths), d, dtype in ((s, d, t) for s in sets.items() for d in dims for t in dtypes):
        b, nnz = len(lengths), sum(lengths)
        offsets = inp.offsets(lengths)
        tag = f"{bag_name} d={d}"

        # hash_scale_bag: ids + a hashed (or direct) table, per-entity scale / bias
        small = bag_name != "medium"
        n_ent, m = (500, 17) if small else (100_000, 5000)
        for hashed, with_s, with_b, mode in [(True, True, True, "mean"), (True, False, False, "sum"),
                                             (False, True, False, "sum"), (True, True, True, "sum")]:
            values = inp.ints(n_ent if hashed else m, nnz, torch.int32 if mode == "mean" else torch.int64)
            table = inp.leaf((m, d), dtype)
            scale = inp.leaf((n_ent,), dtype, 1.0) if with_s else None
            bias = inp.leaf((n_ent,), dtype) if with_b else None
            g = inp.grad((b, d), dtype)
            params = [p for p in (table, scale, bias) if p is not None]
            names = ["out"] + [n for n, p in zip(("table", "scale", "bias"), (table, scale, bias)) if p is not None]

            def call(mod, values=values, table=table, scale=scale, bias=bias, hashed=hashed, mode=mode, g=g,
                     params=params):
                return forward_backward(lambda: mod.hash_scale_bag(values, offsets, table, scale, bias, seed=3,
                                                                   hashed=hashed, mode=mode), params, g)
            label = f"{tag} hashed={hashed} scale={with_s} bias={with_b} {mode}"
            yield "hash_scale_bag", label, dtype, call, names, False

        # qr_bag: ids + quotient / remainder tables
        mq, n_ids = (7, 63) if small else (100, 10_000)
        for operation, mode in [("mult", "sum"), ("mult", "mean"), ("add", "sum")]:
            values = inp.ints(n_ids, nnz)
            q, r = inp.leaf((-(-n_ids // mq), d), dtype, 1.0), inp.leaf((mq, d), dtype, 1.0)
            g = inp.grad((b, d), dtype)

            def call(mod, values=values, q=q, r=r, operation=operation, mode=mode, g=g):
                return forward_backward(lambda: mod.qr_bag(values, offsets, q, r, collisions=mq, operation=operation,
                                                           mode=mode), [q, r], g)
            yield "qr_bag", f"{tag} {operation} {mode}", dtype, call, ["out", "q_table", "r_table"], False

        # mixed_dim_bag: blocks of rows, identity first, odd widths
        rows_k, widths, proj = (([6, 1, 30, 9], [d, 5, 1, 13], [False, True, True, True]) if small
                                else ([100, 1000, 5000, 20000], [d, 64, 32, 16], [False, True, True, True]))
        bo = [0]
        for n in rows_k:
            bo.append(bo[-1] + n)
        for mode in ("sum", "mean"):
            values = inp.ints(bo[-1], nnz)
            tables = [inp.leaf((n, w), dtype) for n, w in zip(rows_k, widths)]
            projs = [inp.leaf((w, d), dtype) if p else None for w, p in zip(widths, proj)]
            present = [p for p in projs if p is not None]
            g = inp.grad((b, d), dtype)
            names = ["out"] + [f"table{k}" for k in range(len(tables))] + [f"proj{k}" for k in range(len(present))]

            def call(mod, values=values, tables=tables, projs=projs, present=present, mode=mode, g=g):
                return forward_backward(lambda: mod.mixed_dim_bag(values, offsets, bo, tables, projs, mode=mode),
                                        tables + present, g)
            yield "mixed_dim_bag", f"{tag} {mode}", dtype, call, names, False

        # robe_bag: ids -> d / z chunks (rows of width z) of one shared array, pooled
        for z, mode in [(1, "sum"), (d, "mean")] + ([(4, "sum")] if d % 4 == 0 else []):
            # fp32: few rows, dozens of chunks per row (the segment reduction's long runs); bf16:
            # ~2 chunks per row, since the reference accumulates a row's gradient in bf16
            # (index backward) and drifts ~10 ulp from the kernels' fp32 sums over 40 chunks
            robe_rows_n = (23 if small else 5000) if dtype == torch.float32 else nnz * (d // z) // 2 + 1
            values = inp.ints(n_ent, nnz, torch.int32 if mode == "mean" else torch.int64)
            bases = inp.ints(ROBE_P, nnz)
            array = inp.leaf((robe_rows_n, z), dtype)
            g = inp.grad((b, d), dtype)

            def call(mod, values=values, bases=bases, array=array, mode=mode, g=g, d=d):
                return forward_backward(lambda: mod.robe_bag(values, offsets, bases, array, dim=d, mult_id=ROBE_MULT_ID,
                                                             mult_block=ROBE_MULT_BLOCK, mode=mode), [array], g)
            yield "robe_bag", f"{tag} z={z} rows={robe_rows_n} {mode}", dtype, call, ["out", "array"], False

        # scale_pool: looked-up rows, per-id scale / bias
        for with_s, with_b, mode, column in [(True, True, "mean", False), (True, False, "sum", True),
                                             (False, True, "sum", False), (False, False, "sum", False)]:
            shape = (nnz, 1) if column else (nnz,)
            rows = inp.leaf((nnz, d), dtype)
            scale = inp.leaf(shape, dtype, 1.0) if with_s else None
            bias = inp.leaf(shape, dtype) if with_b else None
            g = inp.grad((b, d), dtype)
            params = [p for p in (rows, scale, bias) if p is not None]
            names = ["out"] + [n for n, p in zip(("rows", "scale", "bias"), (rows, scale, bias)) if p is not None]

            def call(mod, rows=rows, scale=scale, bias=bias, mode=mode, g=g, params=params):
                return forward_backward(lambda: mod.scale_pool(rows, offsets, scale, bias, mode=mode), params, g)
            yield "scale_pool", f"{tag} scale={with_s} bias={with_b} {mode}{' (nnz,1)' if column else ''}", dtype, \
                call, names, False

        # qr_compose_pool: looked-up quotient and remainder rows
        for operation, mode in [("mult", "sum"), ("mult", "mean"), ("add", "sum")]:
            q, r = inp.leaf((nnz, d), dtype, 1.0), inp.leaf((nnz, d), dtype, 1.0)
            g = inp.grad((b, d), dtype)

            def call(mod, q=q, r=r, operation=operation, mode=mode, g=g):
                return forward_backward(lambda: mod.qr_compose_pool(q, r, offsets, operation=operation, mode=mode),
                                        [q, r], g)
            yield "qr_compose_pool", f"{tag} {operation} {mode}", dtype, call, ["out", "q_rows", "r_rows"], False

        # project_sum: pooled blocks (B rows: the bag count)
        layouts = {"mixed": ([d, 5, 1, 13], [False, True, True, True]),
                   "cafe": ([d, d, d], [False, False, False]),
                   "many": ([3, d, 17, 1, 40, d, 9], [True, False, True, True, True, False, True])}
        bp = b if small else 1000
        for layout, (widths, proj) in layouts.items():
            blocks = [inp.leaf((bp, w), dtype) for w in widths]
            projs = [inp.leaf((w, d), dtype) if p else None for w, p in zip(widths, proj)]
            present = [p for p in projs if p is not None]
            g = inp.grad((bp, d), dtype)
            names = ["out"] + [f"block{k}" for k in range(len(blocks))] + [f"proj{k}" for k in range(len(present))]

            def call(mod, blocks=blocks, projs=projs, present=present, g=g):
                return forward_backward(lambda: mod.project_sum(blocks, projs), blocks + present, g)
            yield "project_sum", f"{tag} {layout} B={bp}", dtype, call, names, False

    # hash_remap: exact, no gradient (once per bag set and id dtype)
    from compactrec.hashing import hash_mod

    for bag_name, lengths in sets.items():
        nnz = max(sum(lengths), 8)
        for id_dtype in (torch.int32, torch.int64):
            hi = torch.iinfo(id_dtype).max
            ids = torch.cat([inp.ints(hi, nnz, id_dtype).cpu(), torch.tensor([hi, hi - 1, 0], dtype=id_dtype)])
            choice = torch.tensor([0, 1, 17, 2**31 - 1, 2**40 + 3])
            moduli = choice[torch.randint(0, 5, ids.shape, generator=inp.gen)]
            keep = moduli == 0
            oracle = torch.where(keep, ids.long(), hash_mod(ids, moduli.masked_fill(keep, 1), 5))
            ids_d, mod_d = ids.to(inp.dev), moduli.to(inp.dev)
            for m in (17, 2**40 + 3, 0, "per-value"):
                def call(mod, m=m):
                    return [mod.hash_remap(ids_d, mod_d if m == "per-value" else m, seed=5)]
                yield "hash_remap", f"{bag_name} {str(id_dtype)[6:]} m={m}", torch.int64, call, ["rows"], True

            def direct(mod):  # against compactrec.hashing itself, not only the reference backend
                return [mod.hash_remap(ids_d, mod_d, seed=5).cpu()]
            yield "hash_remap", f"{bag_name} {str(id_dtype)[6:]} vs compactrec.hashing", torch.int64, direct, \
                ["rows"], ("oracle", oracle)

            # robe_rows: exact, the rows robe_bag gathers (one chunk; several chunks of a big array)
            bases_d = inp.ints(ROBE_P, ids.numel())
            for nb, n_rows in ((1, 23), (5, 1_000_003)):
                def rows_call(mod, nb=nb, n_rows=n_rows, bases_d=bases_d):
                    return [mod.robe_rows(ids_d, bases_d, num_blocks=nb, num_rows=n_rows, mult_id=ROBE_MULT_ID,
                                          mult_block=ROBE_MULT_BLOCK)]
                yield "robe_rows", f"{bag_name} {str(id_dtype)[6:]} chunks={nb} rows={n_rows}", torch.int64, \
                    rows_call, ["rows"], True


def run_parity(inp: Inputs, tiny: bool, backends: Sequence[str], shard=(0, 1)) -> List[Dict]:
    """Every parity case (or those of ``shard`` = (i, n): the i-th of n interleaved groups)."""
    results, groups = [], {}
    for op, case, dtype, call, names, exact in parity_cases(inp, tiny):
        # shards split by (op, dtype, d): the kernel variants of one group compile in one process
        group = groups.setdefault((op, str(dtype), re.search(r"d=\d+", case) and re.search(r"d=\d+", case)[0]),
                                  len(groups))
        if group % shard[1] != shard[0]:
            continue  # the inputs were still drawn: every shard sees the same cases
        try:
            if isinstance(exact, tuple):  # ("oracle", tensor): compare with a precomputed answer
                want, exact = [exact[1]], True
            else:
                want = call(op_module(op, "reference"))
        except Exception as exc:  # noqa: BLE001 - recorded as a failure
            results.append(dict(op=op, case=case, backend="reference", dtype=str(dtype)[6:], ok=False,
                                problems=[f"reference raised {exc!r}"], max_abs_err={}))
            continue
        for backend in backends:
            entry = dict(op=op, case=case, backend=backend, dtype=str(dtype)[6:])
            try:
                entry.update(compare(call(op_module(op, backend)), want, names, dtype, exact=bool(exact)))
            except Exception as exc:  # noqa: BLE001
                entry.update(ok=False, max_abs_err={}, problems=[f"raised {exc!r}",
                                                                 *traceback.format_exc().splitlines()[-4:]])
            results.append(entry)
            if not entry["ok"]:
                print(f"  FAIL {op} [{backend}, {entry['dtype']}] {case}: {entry['problems']}")
    return results


def run_parity_sharded(a, workers: int, device: str) -> List[Dict]:
    """The parity cases in ``workers`` processes on the same device: Triton compiles each new
    kernel variant (~0.5-1 s of one CPU core, hundreds of variants here), and a crash (an
    illegal address kills the CUDA context) costs only that shard, reported as a failure."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i in range(workers):
            out, log = Path(tmp) / f"shard{i}.json", Path(tmp) / f"shard{i}.log"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--device", device, "--out", str(out),
                   "--shard", f"{i}/{workers}"] + (["--tiny"] if a.tiny else [])
            with open(log, "w") as f:
                procs.append((i, out, log, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)))
        deadline = time.monotonic() + a.parity_timeout
        results = []
        for i, out, log, proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            text = log.read_text(errors="replace")
            if proc.returncode == 0 and out.exists():
                results += json.loads(out.read_text())
            else:
                why = "timed out" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
                results.append(dict(op=f"shard {i}", case="worker process", backend="-", dtype="-", ok=False,
                                    max_abs_err={}, problems=[why, *text.splitlines()[-15:]]))
            for line in text.splitlines():
                if "FAIL" in line:
                    print(line)
    return results


def check_dispatch(inp: Inputs, cuda: bool) -> Dict:
    """Under ``auto`` each public op resolves to triton on CUDA (cpu on CPU) and is counted once."""
    import compactrec.kernels as K

    torch = inp.torch
    os.environ.pop("COMPACTREC_KERNELS", None)
    x = inp.leaf((5, 6), torch.float32)
    offsets = inp.offsets([2, 0, 3])
    K.reset_calls()
    try:
        K.scale_pool(x, offsets, x[:, 0].detach(), None)
        K.qr_compose_pool(x, x, offsets)
        K.project_sum([x, x[:, :4]], [None, torch.ones(4, 6, device=inp.dev)])
        K.hash_remap(torch.arange(5, device=inp.dev), 3, seed=1)
        values = torch.tensor([0, 1, 2, 3, 4], device=inp.dev)
        K.hash_scale_bag(values, offsets, x)
        K.qr_bag(values, offsets, x, x[:3], collisions=3)
        K.mixed_dim_bag(values, offsets, [0, 5], [x], [None])
        bases = torch.zeros(5, dtype=torch.int64, device=inp.dev)
        K.robe_bag(values, offsets, bases, x[:, :3], dim=6, mult_id=11, mult_block=5)
        K.robe_rows(values, bases, num_blocks=2, num_rows=7, mult_id=11, mult_block=5)
        counts = {f"{op}/{backend}": n for (op, backend), n in K.calls().items()}
        want = {f"{op}/{'triton' if cuda else 'cpu'}": 1 for op in OPS}
        return dict(ok=counts == want, counts=counts, expected=want)
    except Exception as exc:  # noqa: BLE001
        return dict(ok=False, error=repr(exc))


def check_syncs(inp: Inputs) -> Dict[str, Dict]:
    """Whether one forward + backward of each op's Triton path syncs the host (CUDA only)."""
    import torch

    out: Dict[str, Dict] = {}
    # each op's first fp32 case, run while the generator stands at it: a case's closure reads
    # the bag set's offsets from the generator's frame, which moves on to the next set
    for op, case, dtype, call, names, exact in parity_cases(inp, tiny=True):
        if op in out or dtype == torch.bfloat16 or isinstance(exact, tuple):  # the oracle copies to host
            continue
        mod = op_module(op, "triton")
        try:
            call(mod)  # compiled and warm
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                call(mod)
                out[op] = dict(sync_free=True, case=case)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        except Exception as exc:  # noqa: BLE001 - the sync check reports, it does not fail the run
            out[op] = dict(sync_free=False, case=case, where=(str(exc).splitlines() or [repr(exc)])[0][:200])
    return out


# ---------------------------------------------------------------- timing
def bench(fn: Callable, cuda: bool) -> float:
    """Median milliseconds of ``fn``."""
    if cuda:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(dev, cuda: bool) -> float:
    """Bytes/s of a large device copy (read + write): 1 GiB on CUDA, 64 MiB on CPU."""
    import torch

    n = (1 << 28) if cuda else (1 << 24)
    src = torch.empty(n, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), cuda)
    return 2 * n * 4 / (ms * 1e-3)


def timing_cases(a, inp: Inputs):
    """Yield (op, shape note, {variant: (fwd_fn, bwd_fn | None)}, fwd_bytes, bwd_bytes | None)."""
    torch = inp.torch
    F = torch.nn.functional
    dev, bsz, d, e, s = inp.dev, a.batch, a.dim, 4, 8
    lengths = inp.lengths(bsz, a.pooling)
    offsets = inp.offsets(lengths)
    nnz = sum(lengths)
    grad = inp.grad((bsz, d), torch.float32)

    def fb(fn, params, g):
        """(forward closure, backward closure over one retained graph) for do_bench."""
        def fwd():
            with torch.no_grad():
                return fn()
        if params is None:
            return fwd, None
        graph = {}

        def bwd():
            if "out" not in graph:
                graph["out"] = fn()
            return torch.autograd.grad(graph["out"], params, g, retain_graph=True)
        return fwd, bwd

    # the baseline: an unsharded nn.EmbeddingBag lookup + pool (dense table gradient)
    table = inp.leaf((a.rows, d), torch.float32)
    ids = inp.ints(a.rows, nnz)
    base = fb(lambda: F.embedding_bag(ids, table, offsets, mode="sum", include_last_offset=True), [table], grad)
    yield ("embedding_bag", f"B={bsz} nnz={nnz} d={d} rows={a.rows}", {"torch": base},
           nnz * (s + e * d) + bsz * (16 + e * d), a.rows * e * d + nnz * (40 + s + 4 * d))

    def per_backend(op, fn_of, params):
        return {b: fb((lambda mod: lambda: fn_of(mod))(op_module(op, b)), params, grad if params else None)
                for b in ("triton", "reference")}

    # scale_pool: rows, per-id scale and bias
    rows = inp.leaf((nnz, d), torch.float32)
    w, bias = inp.leaf((nnz,), torch.float32, 1.0), inp.leaf((nnz,), torch.float32)
    yield ("scale_pool", f"nnz={nnz} d={d} scale+bias", per_backend("scale_pool", lambda m: m.scale_pool(
        rows, offsets, w, bias), [rows, w, bias]),
        nnz * (e * d + 8) + bsz * (16 + e * d), nnz * (2 * e * d + 12) + bsz * (16 + 2 * e * d))

    q, r = inp.leaf((nnz, d), torch.float32, 1.0), inp.leaf((nnz, d), torch.float32, 1.0)
    yield ("qr_compose_pool", f"nnz={nnz} d={d} mult", per_backend("qr_compose_pool", lambda m: m.qr_compose_pool(
        q, r, offsets), [q, r]), nnz * 2 * e * d + bsz * (16 + e * d), nnz * 4 * e * d + bsz * (16 + e * d))

    widths, proj = [d, d // 2, d // 4, max(1, d // 8)], [False, True, True, True]
    blocks = [inp.leaf((bsz, wk), torch.float32) for wk in widths]
    projs = [inp.leaf((wk, d), torch.float32) if p else None for wk, p in zip(widths, proj)]
    present = [p for p in projs if p is not None]
    pw = [wk for wk, p in zip(widths, proj) if p]
    yield ("project_sum", f"B={bsz} blocks {widths} -> {d} (first identity)", per_backend(
        "project_sum", lambda m: m.project_sum(blocks, projs), blocks + present),
        e * bsz * (sum(widths) + d) + sum(wk * d * e for wk in pw),
        sum(2 * e * bsz * d + 2 * e * bsz * wk + 2 * e * wk * d for wk in pw))
    cafe = [inp.leaf((bsz, d), torch.float32) for _ in range(3)]
    yield ("project_sum", f"B={bsz} 3 identity blocks (CAFE) d={d}", per_backend(
        "project_sum", lambda m: m.project_sum(cafe, [None] * 3), cafe), e * bsz * 4 * d, 0)

    vals = inp.ints(2**62, nnz)
    moduli = torch.tensor([0, 1000, 100_000, 1_000_000], device=dev)[inp.ints(4, nnz)]
    yield ("hash_remap", f"nnz={nnz} per-value moduli", per_backend("hash_remap", lambda m: m.hash_remap(
        vals, moduli, seed=1), None), nnz * (s + 8 + 8), None)
    yield ("hash_remap", f"nnz={nnz} scalar modulus", per_backend("hash_remap", lambda m: m.hash_remap(
        vals, 1_000_000, seed=1), None), nnz * (s + 8), None)

    # the id -> pooled ops (unsharded tables), models as in their docstrings / benchmarks/kernels.py
    n_ent = 10 * a.rows
    hs_rows = max(1, a.rows // 10)
    values = inp.ints(n_ent, nnz)
    hs_table, hs_scale = inp.leaf((hs_rows, d), torch.float32), inp.leaf((n_ent,), torch.float32, 1.0)
    yield ("hash_scale_bag", f"nnz={nnz} d={d} rows={hs_rows} entities={n_ent}", per_backend(
        "hash_scale_bag", lambda m: m.hash_scale_bag(values, offsets, hs_table, hs_scale, seed=1),
        [hs_table, hs_scale]),
        nnz * (s + e * d + 4) + bsz * e * d + 8 * (bsz + 1),
        nnz * (2 * s + 40 + 16 + 4 * d + 12) + hs_rows * (16 + e * d) + min(hs_rows, nnz) * e * d)
    m = 1000
    nq = -(-n_ent // m)
    qt, rt = inp.leaf((nq, d), torch.float32, 1.0), inp.leaf((m, d), torch.float32, 1.0)
    yield ("qr_bag", f"nnz={nnz} d={d} collisions={m} mult", per_backend(
        "qr_bag", lambda mod: mod.qr_bag(values, offsets, qt, rt, collisions=m), [qt, rt]),
        nnz * (s + 2 * e * d) + bsz * e * d, 2 * nnz * (40 + 24 + 4 * d + e * d) + (nq + m) * (16 + e * d))
    md_rows = [50, 100, 200, a.rows] if a.tiny else [1000, 10_000, 100_000, a.rows]
    bo = [0]
    for n in md_rows:
        bo.append(bo[-1] + n)
    blk = torch.multinomial(torch.tensor([0.4, 0.3, 0.2, 0.1]), nnz, replacement=True, generator=inp.gen)
    md_values = (torch.tensor(bo[:-1])[blk] + (torch.rand(nnz, generator=inp.gen) * torch.tensor(md_rows)[blk]).long())
    md_values = md_values.to(dev)
    md_tables = [inp.leaf((n, wk), torch.float32) for n, wk in zip(md_rows, widths)]
    nnz_k = torch.bincount(blk, minlength=4).tolist()
    yield ("mixed_dim_bag", f"nnz={nnz} blocks {md_rows} x {widths} -> {d}", per_backend(
        "mixed_dim_bag", lambda mod: mod.mixed_dim_bag(md_values, offsets, bo, md_tables, projs),
        md_tables + present),
        sum(n * e * wk for n, wk in zip(nnz_k, widths)) + nnz * s + bsz * e * d,
        sum(n * (56 + 4 * wk) for n, wk in zip(nnz_k, widths))
        + sum(n * (16 + e * wk) for n, wk in zip(md_rows, widths)))
    z = min(32, d)
    nb = d // z
    robe_n = max(1, a.rows // 10)
    array = inp.leaf((robe_n, z), torch.float32)
    bases = inp.ints(ROBE_P, nnz)
    yield ("robe_bag", f"nnz={nnz} d={d} z={z} array rows={robe_n}", per_backend(
        "robe_bag", lambda mod: mod.robe_bag(values, offsets, bases, array, dim=d, mult_id=ROBE_MULT_ID,
                                             mult_block=ROBE_MULT_BLOCK), [array]),
        nnz * (s + 8 + e * d) + bsz * (16 + e * d),
        nnz * nb * (8 + 40 + 8 + 16 + 4 * z) + robe_n * (16 + e * z))
    yield ("robe_rows", f"nnz={nnz} chunks={nb}", per_backend("robe_rows", lambda mod: mod.robe_rows(
        values, bases, num_blocks=nb, num_rows=robe_n, mult_id=ROBE_MULT_ID, mult_block=ROBE_MULT_BLOCK), None),
        nnz * (s + 8 + 8 * nb), None)


def run_timing(a, inp: Inputs, cuda: bool, copy_bw: float) -> List[Dict]:
    rows = []
    for op, shape, variants, fwd_bytes, bwd_bytes in timing_cases(a, inp):
        for variant, (fwd, bwd) in variants.items():
            for phase, fn, nbytes in (("fwd", fwd, fwd_bytes), ("bwd", bwd, bwd_bytes)):
                if fn is None:
                    continue
                entry = dict(op=op, shape=shape, variant=variant, phase=phase, model_bytes=nbytes)
                try:
                    ms = bench(fn, cuda)
                    entry.update(ms=ms)
                    if nbytes:
                        bw = nbytes / (ms * 1e-3)
                        entry.update(GBps=bw / 1e9, frac_of_copy=bw / copy_bw)
                except Exception as exc:  # noqa: BLE001 - a timing failure is reported, not fatal
                    entry.update(error=repr(exc))
                rows.append(entry)
        if cuda:
            import torch

            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- the DLRM interaction
def check_interaction(a, inp: Inputs, cuda: bool) -> Dict:
    """``PairwiseDots`` (``trainer/pairwise_dots.py``, the trainer's DLRM interaction) against
    autograd through TorchRec's formula (``bmm``, then ``G[:, i, j]``): the forward bit for bit
    and the gradient to tolerance in fp32 and bf16, then forward and backward timings of both at
    the demo's shape (B=2048, d=32) and at --batch / --dim, F = 26 (Criteo) + the dense vector."""
    torch = inp.torch
    from compactrec.trainer.pairwise_dots import PairwiseDots, upper_pairs

    def pair_fns(n):
        tri = torch.triu_indices(n, n, offset=1, device=inp.dev)  # TorchRec keeps it as a buffer
        flat = upper_pairs(n, inp.dev)
        return {"pairwise_dots": lambda c: PairwiseDots.apply(c, flat),
                "torchrec": lambda c: torch.bmm(c, c.transpose(1, 2))[:, tri[0], tri[1]]}

    parity = []
    for (b, n, d), dtype in ((s, t) for s in ((7, 27, 32), (3, 2, 4), (300, 27, 128)) for t in (torch.float32,
                                                                                                torch.bfloat16)):
        c = inp.leaf((b, n, d), dtype)
        g = inp.grad((b, n * (n - 1) // 2), dtype)
        fns = pair_fns(n)
        got, want = (forward_backward(lambda f=f: f(c), [c], g) for f in (fns["pairwise_dots"], fns["torchrec"]))
        entry = dict(case=f"B={b} N={n} d={d}", dtype=str(dtype)[6:], forward_bitwise=bool(torch.equal(got[0], want[0])))
        if dtype == torch.float32:
            entry.update(compare(got, want, ["out", "c"], dtype))
        else:  # bf16: both gradients against float64; ours may not be further off than TorchRec's
            c64 = c.detach().double().requires_grad_(True)
            exact = forward_backward(lambda: fns["torchrec"](c64), [c64], g.double())[1]
            err = {k: float((v[1].double() - exact).abs().max()) for k, v in (("ours", got), ("torchrec", want))}
            entry.update(ok=err["ours"] <= 1.5 * err["torchrec"] + 1e-6, max_abs_err_vs_float64=err,
                         problems=[] if err["ours"] <= 1.5 * err["torchrec"] + 1e-6 else [f"gradient error {err}"])
        entry["ok"] = entry["ok"] and entry["forward_bitwise"]
        parity.append(entry)
        if not entry["ok"]:
            print(f"  FAIL interaction [{entry['dtype']}] {entry['case']}: {entry['problems']}")
    timing = []
    if not a.no_timing:
        for b, d in ((min(2048, a.batch), min(32, a.dim)), (a.batch, a.dim)):
            n = 27
            c = inp.leaf((b, n, d), torch.float32)
            g = inp.grad((b, n * (n - 1) // 2), torch.float32)
            row = dict(shape=f"B={b} N={n} d={d} fp32")
            for name, fn in pair_fns(n).items():
                graph = {}

                def fwd(fn=fn):
                    with torch.no_grad():
                        return fn(c)

                def bwd(fn=fn, graph=graph):
                    if "out" not in graph:
                        graph["out"] = fn(c)
                    return torch.autograd.grad(graph["out"], [c], g, retain_graph=True)
                row[name] = dict(fwd_ms=bench(fwd, cuda), bwd_ms=bench(bwd, cuda))
            ours, ref = row["pairwise_dots"], row["torchrec"]
            row["speedup_fwd_bwd"] = (ref["fwd_ms"] + ref["bwd_ms"]) / (ours["fwd_ms"] + ours["bwd_ms"])
            timing.append(row)
    return dict(ok=all(p["ok"] for p in parity), parity=parity, timing=timing)


# ---------------------------------------------------------------- main
def save(report: Dict, path: str) -> Path:
    """The report as JSON, written atomically (``compactrec.io``, stdlib only: a run cut off
    mid-timing leaves the last whole report, not half a file)."""
    from compactrec.io import atomic_write_text

    return atomic_write_text(path, json.dumps(report, indent=1, default=str))


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda but torch sees no CUDA device")
    bootstrap("cuda" if cuda else "cpu")
    import triton

    from compactrec.kernels._common import POISON_ENV, interpreting

    dev = torch.device("cuda" if cuda else "cpu")
    torch.set_float32_matmul_precision("highest")  # fp32 references without TF32
    t0 = time.perf_counter()
    report: Dict = dict(
        device=torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})",
        torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
        interpreted=interpreting(), tiny=a.tiny, args=vars(a),
    )
    if not a.shard:
        print(f"# gpu_check on {report['device']}: torch {torch.__version__}, triton {triton.__version__}"
              f"{' (interpreter)' if report['interpreted'] else ''}{', tiny' if a.tiny else ''}")

    os.environ[POISON_ENV] = "1"  # kernel outputs start as NaN: an unwritten element fails parity
    inp = Inputs(dev, seed=0)
    if a.shard:  # a worker of run_parity_sharded: its share of the cases, as a JSON list
        i, n = (int(x) for x in a.shard.split("/"))
        Path(a.out).write_text(json.dumps(run_parity(inp, a.tiny, ("triton", "cpu"), shard=(i, n)), default=str))
        return 0
    workers = a.workers or (max(1, min(12, (os.cpu_count() or 2) - 2)) if cuda else 1)
    if workers > 1:
        parity = run_parity_sharded(a, workers, dev.type)
    else:
        parity = run_parity(inp, a.tiny, backends=("triton", "cpu"))
    os.environ.pop(POISON_ENV, None)
    per_op = {op: dict(ok=any(r["op"] == op for r in parity) and all(r["ok"] for r in parity if r["op"] == op),
                       cases=sum(r["op"] == op for r in parity)) for op in OPS}  # no checks is a failure
    report.update(parity=parity, parity_by_op=per_op, parity_workers=workers, parity_ok=all(
        r["ok"] for r in parity) and all(v["cases"] for v in per_op.values()))
    report["dispatch"] = check_dispatch(inp, cuda)
    report["syncs"] = check_syncs(inp) if cuda else None
    print(f"# parity: {sum(r['ok'] for r in parity)}/{len(parity)} ok ({time.perf_counter() - t0:.0f} s)")
    for op, v in per_op.items():
        print(f"  {op:16s} {'ok' if v['ok'] else 'FAILED'} ({v['cases']} checks)"
              + (f"; host syncs: {'none' if report['syncs'][op]['sync_free'] else report['syncs'][op]['where']}"
                 if report["syncs"] and op in report["syncs"] else ""))
    print(f"  dispatch under auto: {'ok' if report['dispatch']['ok'] else report['dispatch']}")
    save(report, a.out)  # the parity result survives a run cut off while timing
    report["interaction"] = inter = check_interaction(a, inp, cuda)
    print(f"  interaction (PairwiseDots vs TorchRec's formula): {'ok' if inter['ok'] else 'FAILED'} "
          f"({len(inter['parity'])} checks)")
    for t in inter["timing"]:
        ours, ref = t["pairwise_dots"], t["torchrec"]
        print(f"    {t['shape']}: fwd {ours['fwd_ms']:.3f} vs {ref['fwd_ms']:.3f} ms, bwd {ours['bwd_ms']:.3f} vs "
              f"{ref['bwd_ms']:.3f} ms (ours vs TorchRec's); fwd+bwd {t['speedup_fwd_bwd']:.2f}x")
    save(report, a.out)

    if not a.no_timing:
        copy_bw = copy_bandwidth(dev, cuda)
        report["copy_bandwidth_GBps"] = copy_bw / 1e9
        timing = run_timing(a, inp, cuda, copy_bw)
        report["timing"] = timing
        print(f"# timings (median ms; GB/s from the traffic models; copy {copy_bw / 1e9:.0f} GB/s)")
        print(f"  {'op':16s} {'variant':10s} {'phase':5s} {'ms':>9s} {'GB/s':>8s} {'of copy':>8s}  shape")
        for t in timing:
            if "error" in t:
                print(f"  {t['op']:16s} {t['variant']:10s} {t['phase']:5s} error: {t['error'][:80]}")
                continue
            bw = f"{t['GBps']:8.1f} {t['frac_of_copy']:8.1%}" if "GBps" in t else f"{'':8s} {'':8s}"
            print(f"  {t['op']:16s} {t['variant']:10s} {t['phase']:5s} {t['ms']:9.3f} {bw}  {t['shape']}")
    report["wall_s"] = time.perf_counter() - t0
    # what this run imported beyond the stdlib (the GPU machine has no TorchRec / FBGEMM / Ray / OmegaConf)
    report["third_party_modules"] = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names))
    out = save(report, a.out)
    ok = report["parity_ok"] and report["dispatch"]["ok"] and report["interaction"]["ok"]
    print(f"# {'PASS' if ok else 'FAIL'}: wrote {out} ({report['wall_s']:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
