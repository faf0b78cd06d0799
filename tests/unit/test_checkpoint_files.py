"""Checkpoint folders on their own (a stub engine, no training): the manifest and its
checksums, folders that must be refused without unpickling anything, corrupted data, the
atomic replace of a step, and pruning that never drops the newest checkpoint."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from compactrec.trainer import checkpoint as ck
from compactrec.trainer.checkpoint import CheckpointError, TrainState, latest_checkpoint, load_checkpoint, problem
from compactrec.trainer.checkpoint_manifest import MANIFEST, hash_files, list_files, write_manifest


class StubEngine:
    """The dense engine's checkpoint interface over one tensor."""

    def __init__(self, value: float = 0.0) -> None:
        self.w = torch.full((64, 8), value)
        self.model = torch.nn.Linear(1, 1)

    def state_dict(self):
        return {"model": {"w": self.w}}

    def load_state_dict(self, state) -> None:
        self.w.copy_(state["model"]["w"])

    def save_files(self, folder) -> None:
        pass

    def load_files(self, folder) -> None:
        pass


class Planted:
    """Unpickling this writes ``marker``: what an attacker's file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _save(root: Path, step: int, value: float = 0.0, keep: int = 5) -> Path:
    return ck.save_checkpoint(root, StubEngine(value), TrainState(step=step, epoch=0), keep=keep)


def _reseal(folder: Path) -> None:
    """Rewrite manifest.json over the folder's current files: an attacker who can write
    the folder can also write a matching manifest."""
    step = json.loads((folder / MANIFEST).read_text())["step"] if (folder / MANIFEST).exists() else 0
    write_manifest(folder, hash_files(folder, list(list_files(folder))), step)


def test_save_writes_a_manifest_of_every_file_and_the_load_round_trips(tmp_path: Path):
    path = _save(tmp_path, 3, value=1.5)
    listed = json.loads((path / MANIFEST).read_text())["files"]
    assert set(listed) == {".metadata", "__0_0.distcp", "meta.json", "rng_rank0.pt"}
    assert all(listed[n]["size"] == (path / n).stat().st_size for n in listed)
    assert problem(path) is None
    engine = StubEngine(0.0)
    state = load_checkpoint(path, engine)
    assert state.step == 3 and torch.equal(engine.w, torch.full((64, 8), 1.5))


def test_same_size_corruption_is_found_and_the_previous_checkpoint_is_used(tmp_path: Path, capsys):
    _save(tmp_path, 4, value=4.0)
    newest = _save(tmp_path, 8, value=8.0)
    data = newest / "__0_0.distcp"
    raw = bytearray(data.read_bytes())
    raw[100:164] = bytes(255 - b for b in raw[100:164])  # same size: a size check cannot see it
    data.write_bytes(bytes(raw))
    assert "__0_0.distcp: checksum mismatch" in problem(newest)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000000004"
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and str(newest) in out and "__0_0.distcp" in out
    with pytest.raises(CheckpointError, match="__0_0.distcp: checksum mismatch"):
        load_checkpoint(newest, StubEngine())


def test_truncated_file_and_missing_marker_are_named(tmp_path: Path):
    path = _save(tmp_path, 2)
    shutil.copytree(path, tmp_path / "short")
    rng = tmp_path / "short" / "rng_rank0.pt"
    rng.write_bytes(rng.read_bytes()[:-10])
    assert "rng_rank0.pt:" in problem(tmp_path / "short") and "truncated" in problem(tmp_path / "short")
    (path / ck.COMPLETE).unlink()
    assert "COMPLETE" in problem(path)


def test_a_folder_without_our_manifest_is_refused_not_unpickled(tmp_path: Path):
    path = _save(tmp_path, 2)
    (path / MANIFEST).unlink()  # as an older CompactRec wrote them
    assert "manifest.json: missing" in problem(path) and "refused rather than unpickled" in problem(path)


@pytest.mark.parametrize("sealed", [False, True], ids=["no-manifest", "matching-manifest"])
def test_planted_pickles_never_run(tmp_path: Path, sealed: bool):
    """A crafted .metadata and rng_rank0.pt, in a folder given to resume and among a run's
    own checkpoints: validation, latest_checkpoint, prune and load never run them, even with
    a manifest that matches the planted bytes."""
    marker = tmp_path / "marker"
    root = tmp_path / "checkpoints"
    good = _save(root, 4)
    for step, planted in ((8, ".metadata"), (9, "rng_rank0.pt")):
        evil = root / f"step_00000000{step}"
        shutil.copytree(good, evil)
        if planted == ".metadata":
            (evil / planted).write_bytes(pickle.dumps(Planted(marker)))
        else:
            torch.save(Planted(marker), evil / planted)
        if sealed:
            _reseal(evil)
        else:
            (evil / MANIFEST).unlink()
        why = problem(evil)
        assert why is not None and (planted in why or MANIFEST in why), why
        with pytest.raises(CheckpointError):
            load_checkpoint(evil, StubEngine())
    assert latest_checkpoint(root) == good  # both skipped
    _save(root, 5, keep=1)  # its prune judges every folder
    assert latest_checkpoint(root) == root / "step_000000005"  # the new one is kept, the planted skipped
    assert not marker.exists()


def test_a_kill_between_the_renames_of_a_replace_loses_nothing(tmp_path: Path, monkeypatch):
    _save(tmp_path, 6, value=1.0)
    real_rename = Path.rename

    def rename(self, target):
        if self.name == ".step_000000006.tmp":  # the old step 6 is set aside, the new one not in place: a kill
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 6, value=2.0)
    monkeypatch.setattr(Path, "rename", real_rename)
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.name == ".step_000000006.old"  # the previous version of step 6
    ck.prune(tmp_path, 2, tmp_path / "step_000000007")  # the next save's prune puts it back
    assert problem(tmp_path / "step_000000006") is None and not (tmp_path / ".step_000000006.old").exists()
    engine = StubEngine()
    load_checkpoint(tmp_path / "step_000000006", engine)
    assert float(engine.w[0, 0]) == 1.0


def test_keep_below_one_is_refused_before_anything_is_deleted(tmp_path: Path):
    _save(tmp_path, 1)
    with pytest.raises(ValueError, match="keep_checkpoints >= 1"):
        ck.prune(tmp_path, 0, tmp_path / "step_000000001")
    with pytest.raises(ValueError, match="keep_checkpoints >= 1"):
        _save(tmp_path, 2, keep=0)
    assert [p.name for p in ck.checkpoints(tmp_path)] == ["step_000000001"]


def test_a_manifest_cannot_point_outside_its_folder(tmp_path: Path):
    path = _save(tmp_path, 1)
    m = json.loads((path / MANIFEST).read_text())
    m["files"]["../../etc/passwd"] = {"size": 1, "digest": "0" * 64}
    (path / MANIFEST).write_text(json.dumps(m))
    assert "bad entry '../../etc/passwd'" in problem(path)


def test_an_index_that_calls_a_tensor_bytes_cannot_make_the_loader_unpickle(tmp_path: Path):
    """DCP's default planner unpickles "bytes" entries fully; a crafted (and resealed)
    index that says a tensor is bytes must not turn the load into code execution."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    marker = tmp_path / "marker"
    path = _save(tmp_path / "ckpt", 1)
    md = pickle.loads((path / ".metadata").read_bytes())  # the test's own file: trusted here
    payload = tmp_path / "payload.pt"
    torch.save(Planted(marker), payload)
    (path / "__9_0.distcp").write_bytes(payload.read_bytes())
    md.state_dict_metadata["model.w"] = BytesStorageMetadata()
    md.storage_data = {MetadataIndex("model.w"): _StorageInfo("__9_0.distcp", 0, payload.stat().st_size)}
    (path / ".metadata").write_bytes(pickle.dumps(md))
    _reseal(path)
    assert problem(path) is None  # a well-formed index over listed files: only the load can tell
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path, StubEngine())
    assert not marker.exists()
