"""compactrec.kernels and every backend module import nothing beyond torch, triton, numpy and the stdlib.

The GPU check machine has only those (no TorchRec, FBGEMM, Ray, OmegaConf): a stray import
there fails the whole check, so it is caught here, in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ["hash_scale", "qr", "mixed_dim", "row_scale", "qr_compose", "projection", "remap"]
BANNED = ["torchrec", "fbgemm_gpu", "ray", "omegaconf", "pyarrow", "pandas", "deepspeed", "tensorboard",
          "torchmetrics", "yaml", "compactrec.trainer", "compactrec.embeddings", "compactrec.sharding",
          "compactrec.data", "compactrec.cluster"]

PROBE = r"""
import json, sys
import torch, numpy, triton, triton.language  # what the kernels may use, and whatever they import
allowed = {m.split(".")[0] for m in sys.modules}
before = set(sys.modules)
import compactrec.kernels
light = "triton" not in {m.split(".")[0] for m in set(sys.modules) - before}
mods = ["compactrec.kernels._common", "compactrec.kernels._dispatch", "compactrec.kernels._segment",
        "compactrec.kernels.hashing"]
mods += [f"compactrec.kernels.{f}.{b}" for f in FOLDERS for b in ("reference", "cpu", "triton")]
import importlib
for m in mods:
    importlib.import_module(m)
new = sorted(set(sys.modules) - before)
print(json.dumps(dict(new=new, allowed=sorted(allowed), stdlib=sorted(sys.stdlib_module_names))))
"""


def _run(code: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", f"FOLDERS = {FOLDERS!r}\n" + code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernels_import_only_torch_triton_numpy():
    r = _run(PROBE)
    new = r["new"]
    for name in BANNED:
        assert not [m for m in new if m == name or m.startswith(name + ".")], f"{name} imported by the kernels"
    tops = {m.split(".")[0] for m in new}
    outside = tops - set(r["allowed"]) - set(r["stdlib"]) - {"compactrec"}
    assert not outside, f"kernels import packages beyond torch/triton/numpy: {sorted(outside)}"
    ours = {m for m in new if m.startswith("compactrec")}
    assert ours <= {"compactrec", "compactrec.hashing"} | {m for m in ours if m.startswith("compactrec.kernels")}, ours


def test_importing_the_package_does_not_import_triton():
    r = _run("import json, sys\nimport compactrec.kernels\n"
             "print(json.dumps(dict(new=sorted(sys.modules), allowed=[], stdlib=[])))")
    assert "triton" not in r["new"] and not [m for m in r["new"] if m.startswith("triton.")]


def test_no_folder_shadows_a_public_op():
    """Importing compactrec.kernels.<folder> sets that attribute on the package: a folder named
    like a public op would replace the function with the module."""
    import compactrec.kernels as k

    assert not set(FOLDERS) & set(k.__all__)
    for name in k.__all__:
        assert callable(getattr(k, name)) or name == "BACKENDS", name
