"""Compile every Triton kernel launch for a GPU, without a GPU: catches what the interpreter does not.

    python benchmarks/triton_compile_check.py [--arch 90] [--out compile_check.json]
    python benchmarks/triton_compile_check.py --triton-path DIR   # compile with the Triton installed in DIR
                                          (e.g. pip install --no-deps --target DIR triton==3.6.0)

The CPU interpreter runs the kernels as numpy code, so it accepts things the compiler
rejects (a plain global read in a kernel, a tl.dot below 16, a construct an older Triton
lacks) and the tests cannot see them. This runs in two processes:
1. capture (TRITON_INTERPRET=1): gpu_check's tiny parity cases (odd and one-hot bags, d = 13
   and 128), plus one forward and backward of each timing case at d = 128 (tiny batch), with
   every launch recorded (kernel, argument
   dtypes / alignment / int values, constexprs). The launchers are made to pick their GPU
   tile sizes and the native 16-bit tl.dot, as on a device (the values computed then are
   not checked: only the launches matter).
2. compile (TRITON_INTERPRET=0): each distinct launch goes through the real JIT path,
   ``kernel.run(..., warmup=True)`` (the same specialisation and ``triton.compile`` as a
   launch), against a stand-in driver that reports an sm_<arch> target, down to a cubin
   (ptxas ships with Triton). Nothing is launched.
Exit code 1 if any launch fails to compile. Not checked: launch-time limits (shared memory,
registers), numerics: benchmarks/gpu_check.py on a GPU checks those.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _describe(x):
    import torch

    if torch.is_tensor(x):
        return {"tensor": str(x.dtype)[6:], "aligned": x.data_ptr() % 16 == 0}
    if x is None or isinstance(x, (bool, int, float, str)):
        return {"value": x}
    raise TypeError(f"unexpected kernel argument {type(x)}")


def capture(path: Path) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import gpu_check

    gpu_check.bootstrap("cpu")
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    import compactrec.kernels._common as common

    common.interpreting = lambda: False  # tile_sizes: the GPU register budget, not the interpreter's
    importlib.import_module("compactrec.kernels.projection.triton").interpreting = lambda: False  # native bf16 dot
    launches = {}
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        spec = dict(module=self.fn.__module__, name=self.fn.__name__, args=[_describe(a) for a in args],
                    kwargs={k: _describe(v) for k, v in kwargs.items()})
        launches.setdefault(json.dumps(spec, sort_keys=True), spec)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run
    inp = gpu_check.Inputs(torch.device("cpu"))
    for _op, _case, _dtype, call, _names, exact in gpu_check.parity_cases(inp, tiny=True, dims=[13, 128]):
        if not isinstance(exact, tuple):
            call(gpu_check.op_module(_op, "triton"))
    a = gpu_check.parse_args(["--tiny"])
    a.dim = 128
    for _op, _shape, variants, _fb, _bb in gpu_check.timing_cases(a, inp):
        if "triton" in variants:
            fwd, bwd = variants["triton"]
            fwd()
            if bwd is not None:
                bwd()
    path.write_text(json.dumps(list(launches.values())))
    print(f"# captured {len(launches)} distinct launches")


class _StandInDriver:
    """Just enough of a Triton driver for ``JITFunction.run(warmup=True)``: a target, no device."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


def _build(d):
    import torch

    if "tensor" in d:
        base = torch.empty(64, dtype=getattr(torch, d["tensor"]))
        return base if d["aligned"] else base[1:]  # keep the launch's 16-byte (non-)alignment
    return d["value"]


def compile_all(path: Path, arch: int, out: Path) -> int:
    os.environ["TRITON_INTERPRET"] = "0"
    import gpu_check

    gpu_check.bootstrap("cuda")
    import triton
    from triton.runtime.driver import driver

    driver.set_active(_StandInDriver(arch))
    results, failed = [], 0
    for spec in json.loads(path.read_text()):
        fn = getattr(importlib.import_module(spec["module"]), spec["name"])
        args = [_build(x) for x in spec["args"]]
        kwargs = {k: _build(v) for k, v in spec["kwargs"].items()}
        consts = {k: v for k, v in kwargs.items() if not hasattr(v, "dtype")}
        t0 = time.perf_counter()
        try:
            kernel = fn.run(*args, grid=(1,), warmup=True, **kwargs)
            entry = dict(ok=True, cubin_bytes=len(kernel.asm["cubin"]), n_regs=getattr(kernel, "n_regs", None))
        except Exception as exc:  # noqa: BLE001 - reported
            failed += 1
            entry = dict(ok=False, error=f"{type(exc).__name__}: {str(exc)[:2000]}")
            print(f"  FAIL {spec['module']}.{spec['name']} {consts}: {entry['error'][:600]}")
        entry.update(kernel=f"{spec['module']}.{spec['name']}", constexprs=consts, s=time.perf_counter() - t0)
        results.append(entry)
    out.write_text(json.dumps(dict(triton=triton.__version__, arch=arch, failed=failed, results=results), indent=1))
    kernels = sorted({r["kernel"] for r in results})
    print(f"# triton {triton.__version__}, sm_{arch}: {len(results) - failed}/{len(results)} launches compiled, "
          f"{len(kernels)} kernels; wrote {out}")
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100/H200), 80 (A100)")
    p.add_argument("--out", default="compile_check.json")
    p.add_argument("--triton-path", default=None,
                   help="a folder holding another Triton to compile with (the capture uses this one's interpreter)")
    p.add_argument("--phase", choices=["all", "capture", "compile"], default="all", help=argparse.SUPPRESS)
    p.add_argument("--launches", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    launches = Path(a.launches or Path(a.out).with_suffix(".launches.json"))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    if a.phase == "capture":
        capture(launches)
        return 0
    if a.phase == "compile":
        return compile_all(launches, a.arch, Path(a.out))
    for phase in ("capture", "compile"):  # two processes: TRITON_INTERPRET is read at import
        env = dict(os.environ)
        if phase == "compile" and a.triton_path:
            env["PYTHONPATH"] = os.pathsep.join([a.triton_path] + [x for x in [env.get("PYTHONPATH")] if x])
        rc = subprocess.call([sys.executable, __file__, "--phase", phase, "--launches", str(launches), "--arch",
                              str(a.arch), "--out", a.out], env=env)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
