"""benchmarks/gpu_check.py in its smoke mode: the interpreter, tiny shapes, every op's parity in the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS = {"hash_scale_bag", "qr_bag", "mixed_dim_bag", "robe_bag", "scale_pool", "qr_compose_pool", "project_sum",
       "hash_remap", "robe_rows"}
EXACT = {"hash_remap", "robe_rows"}  # integer outputs, no gradient


@pytest.mark.slow
def test_smoke_mode_writes_a_passing_report(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("COMPACTREC_KERNELS", None)
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["interpreted"] and report["tiny"] and report["parity_ok"]
    parity = report["parity"]
    assert parity and all(r["ok"] for r in parity), [r for r in parity if not r["ok"]]
    assert {r["op"] for r in parity} == OPS
    for op in OPS:  # both backends, both float dtypes (hash_remap: int64 only), forward and backward
        mine = [r for r in parity if r["op"] == op]
        assert {r["backend"] for r in mine} == {"triton", "cpu"}, op
        assert {r["dtype"] for r in mine} == ({"int64"} if op in EXACT else {"float32", "bfloat16"}), op
        if op not in EXACT:
            assert all(len(r["max_abs_err"]) >= 2 for r in mine), op  # the output and at least one gradient
    assert report["dispatch"]["ok"], report["dispatch"]
    timed = {(t["op"], t["variant"], t["phase"]) for t in report["timing"] if "ms" in t}
    assert not [t for t in report["timing"] if "error" in t]
    for op in OPS - EXACT:
        assert {(op, "triton", "fwd"), (op, "triton", "bwd"), (op, "reference", "bwd")} <= timed, op
    for op in EXACT:
        assert (op, "triton", "fwd") in timed, op
    assert ("embedding_bag", "torch", "bwd") in timed
    inter = report["interaction"]  # the trainer's DLRM interaction, torch only
    assert inter["ok"] and len(inter["parity"]) == 6 and all(p["forward_bitwise"] for p in inter["parity"])
    assert len(inter["timing"]) == 2
    assert all(t[v][k] > 0 for t in inter["timing"] for v in ("pairwise_dots", "torchrec") for k in ("fwd_ms", "bwd_ms"))
    assert report["copy_bandwidth_GBps"] > 0
    banned = {"torchrec", "fbgemm_gpu", "ray", "omegaconf", "deepspeed"}  # absent on the GPU check machine
    assert not banned & set(report["third_party_modules"]), report["third_party_modules"]
    assert all(0 < t["frac_of_copy"] for t in report["timing"] if "frac_of_copy" in t)
