"""The CPU lock (what the tests prove) and the CUDA lock (what the cluster image installs) are one
environment: the same pins for every package that is not CUDA-specific, and the image installs
exactly the CUDA lock on the Python both are made for."""

from __future__ import annotations

import re
from pathlib import Path

from compactrec.cluster.gpu_lock import CPU_LOCK, GPU_LOCK, SWAP, canonical, is_cuda_specific, read_lock

REPO = Path(__file__).resolve().parents[2]


def test_locks_agree_outside_cuda_specific_packages():
    cpu, gpu = read_lock(CPU_LOCK), read_lock(GPU_LOCK)
    shared_cpu = {n: canonical(p) for n, p in cpu.items() if not is_cuda_specific(n)}
    shared_gpu = {n: canonical(p) for n, p in gpu.items() if not is_cuda_specific(n)}
    assert shared_cpu == shared_gpu, {
        n: (shared_cpu.get(n), shared_gpu.get(n))
        for n in shared_cpu.keys() | shared_gpu.keys()
        if shared_cpu.get(n) != shared_gpu.get(n)
    }
    assert len(shared_cpu) > 100  # the whole closure, not a handful of top-level names


def test_cuda_lock_swaps_cpu_builds_for_their_cuda_twins_at_the_same_version():
    cpu, gpu = read_lock(CPU_LOCK), read_lock(GPU_LOCK)
    for cpu_name, cuda_name in SWAP.items():
        assert cpu_name in cpu and cpu_name not in gpu
        assert cpu[cpu_name].split("==")[1] == gpu[cuda_name].split("==")[1]
    assert any(n.startswith("nvidia-") for n in gpu)  # the CUDA libraries CUDA torch pins
    assert not any(n.startswith(("nvidia-", "cuda-")) for n in cpu)


def test_cuda_specific_is_narrow():
    assert is_cuda_specific("fbgemm_gpu-cpu") and is_cuda_specific("nvidia-nccl-cu13")
    assert not is_cuda_specific("torch") and not is_cuda_specific("triton") and not is_cuda_specific("ray")


def test_every_lock_line_is_an_exact_pin(tmp_path: Path):
    bad = tmp_path / "bad.lock"
    bad.write_text("torch>=2.13\n")
    try:
        read_lock(bad)
    except ValueError as e:
        assert "bad.lock" in str(e) and "torch>=2.13" in str(e)
    else:
        raise AssertionError("a range was accepted as a pin")


def test_dockerfile_installs_the_cuda_lock_on_python_311():
    docker = (REPO / "cluster" / "Dockerfile").read_text()
    base = re.search(r"ARG PYTHON_IMAGE=python:(\d+\.\d+)", docker)
    assert base and base.group(1) == "3.11"
    assert "COPY requirements-gpu.lock" in docker
    assert "-r requirements-gpu.lock" in docker and "--no-deps" in docker
    # no version is pinned in the Dockerfile itself: the lock is the one place
    assert not re.search(r"pip install[^\n]*[A-Za-z0-9]==[0-9]", docker)
    for folder in ("compactrec", "data", "trainer", "sharding", "kernels", "cluster", "embeddings", "configs"):
        assert f"COPY {folder} ./{folder}" in docker, folder


def test_makefile_installs_build_tools_before_the_lock():
    make = (REPO / "Makefile").read_text()
    tools = make.index("$(BUILD_TOOLS)")
    lock = make.index("-r requirements.lock")
    assert tools < lock
    assert "grep -E '^(pip|setuptools)==' requirements.lock" in make  # versions come from the lock
