"""Data for the distributed tests: every feature multi-hot, so a method that pools before it
composes (QR, MEmCom) or a sharding that mixes up bag boundaries changes the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_data


@pytest.fixture(scope="session")
def all_multihot_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_data`` with all 26 features multi-hot (bags of 1-4 ids): the compressed
    (large) features too, which ``tiny_multihot_data`` (last 3, all small) leaves one-hot."""
    return make_data(tmp_path_factory.mktemp("tiny_all_mh"), multi_hot_features=26)
