"""Files planted by someone else never run code: a crafted ``.metadata`` and ``rng_rank0.pt``
(which write a marker file when unpickled) in a run's own checkpoints folder before a fresh
run (its saves prune that folder), in a folder given to ``trainer.resume_from``, and
met again by ``resume_from=latest``. With and without a manifest that matches them."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from compactrec.cli import main
from compactrec.trainer.checkpoint_manifest import hash_files, list_files, write_manifest

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "methods" / "hash.yaml")
TINY = ["trainer.progress_bar=false", "trainer.tensorboard=false", "data.batch_size=128", "data.eval_batch_size=512",
        "trainer.launcher=local", "cluster.num_workers=1", "trainer.max_steps=4", "trainer.checkpoint_every=2",
        "trainer.keep_checkpoints=1"]


class Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _plant(folder: Path, marker: Path, step: int, sealed: bool) -> None:
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    torch.save(Planted(marker), folder / "rng_rank0.pt")
    (folder / "__0_0.distcp").write_bytes(b"\0" * 4096)
    (folder / "meta.json").write_text(json.dumps({"step": step, "epoch": 0}))
    (folder / "COMPLETE").write_text(f"{step}\n")
    if sealed:  # a manifest that matches the planted bytes
        write_manifest(folder, hash_files(folder, list(list_files(folder))), step)


def test_planted_pickles_never_run(tiny_data: Path, tmp_path: Path, capsys):
    marker = tmp_path / "marker"
    runs = tmp_path / "runs"
    own = runs / "run" / "checkpoints"
    _plant(own / "step_000000099", marker, 99, sealed=True)
    _plant(own / "step_000000098", marker, 98, sealed=False)
    elsewhere = tmp_path / "downloaded"
    _plant(elsewhere / "step_000000005", marker, 5, sealed=True)
    common = [*TINY, f"data.path={tiny_data}", f"runs_dir={runs}"]

    # the run's own checkpoints folder (fixed, so the planted files are in it for every launch)
    assert main(["train", CONFIG, *common, "name=run", f"trainer.checkpoint_dir={own}"]) == 0  # two saves, each prunes
    assert not marker.exists()
    assert (own / "step_000000004").is_dir() and not (own / "step_000000002").exists()  # keep=1 applied to its own

    capsys.readouterr()
    assert main(["train", CONFIG, *common, "name=other", f"trainer.resume_from={elsewhere}"]) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint there" in err and ".metadata: not a DCP index: refused to load 'builtins.exec'" in err
    assert "rng_rank0.pt: not an RNG state (torch.load(weights_only=True) refused it: " in err
    assert not marker.exists()

    assert main(["train", CONFIG, *common, "name=run", f"trainer.checkpoint_dir={own}", "trainer.resume_from=latest"]) == 0
    out = capsys.readouterr().out
    assert f"skipping checkpoint {own / 'step_000000099'}: " in out and "refused to load 'builtins.exec'" in out
    assert f"skipping checkpoint {own / 'step_000000098'}: {own / 'step_000000098' / 'manifest.json'}: missing" in out
    assert f"resumed from {own / 'step_000000004'}" in out
    assert not marker.exists()
