"""Shared fixtures: tiny synthetic data sets made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Read when @triton.jit functions are defined: set before any test module (or the modules it
# imports) loads a kernel module, so tests/kernels can run the kernels under the interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")

from compactrec.logs import quiet_third_party  # noqa: E402

quiet_third_party()

from compactrec.trainer.config import SynthConfig  # noqa: E402
from compactrec.data.datasets.synthetic import generate  # noqa: E402

TINY = dict(
    rows_train=4096,
    rows_eval=1024,
    shards_train=2,
    shards_eval=1,
    row_group_size=512,
    scale=1e-4,
    min_cardinality=8,
)


def make_data(root: Path, **overrides) -> Path:
    generate(SynthConfig(**{**TINY, **overrides}), root)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4096 train / 1024 eval one-hot rows, 26 features with 3-4000 ids."""
    return make_data(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_multihot_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_data`` with the last 3 features multi-hot (bags of 1-4 ids)."""
    return make_data(tmp_path_factory.mktemp("tiny_mh"), multi_hot_features=3)


@pytest.fixture
def one_rank_group(tmp_path):
    """A 1-rank gloo process group in this process (the sharded code's collectives run)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()
