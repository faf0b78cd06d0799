"""Trial cases of group checkpoint (benchmarks/trial.py): planted and damaged checkpoint files:
refused without running code, the previous checkpoint used, nothing lost."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Tuple

import torch

from trial_harness import Ctx, Outcome, case, expect_error, expect_ok, launch, metrics, train


class Planted:
    """Unpickling writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _reseal(folder: Path) -> None:
    """A manifest.json over the folder's current files, as an attacker who can write the
    folder would write one (nothing to do for code without manifests)."""
    try:
        from compactrec.trainer.checkpoint_manifest import hash_files, list_files, write_manifest
    except ImportError:  # benchmarks/trial.py run against code from before issue 15
        return
    write_manifest(folder, hash_files(folder, list(list_files(folder))), 0)


def _copy_base(ctx: Ctx, name: str) -> Tuple[Path, dict]:
    ckpts, base_metrics = ctx.base()
    dst = ctx.path(f"ckpt_{name}")
    shutil.copytree(ckpts, dst)
    return dst, base_metrics


def _resumes_previous(ctx: Ctx, name: str, tamper, warn: str) -> Outcome:
    """Tamper with the newest checkpoint (step 4) of a copy of the base run, resume from the
    folder: recovered = step 4 skipped with a warning naming ``warn``, step 2 used, the
    final weights bitwise equal to the base run's."""
    folder, base = _copy_base(ctx, name)
    tamper(folder / "step_000000004")
    runs = ctx.path(f"runs_{name}")
    r = train(ctx, runs, name, "trainer.checkpoint_every=2", "trainer.keep_checkpoints=3", f"trainer.resume_from={folder}")

    def ok():
        m = metrics(runs, name)
        used = f"resumed from {folder / 'step_000000002'}" in r.out
        warned = "skipping checkpoint" in r.out and warn in r.out
        same = m["weights_digest"] == base["weights_digest"]
        return used and warned and same, f"fell back to step 2: {used}, warning names {warn}: {warned}, weights equal: {same}"

    return expect_ok(r, ok)


def _flip(name: str, at: float = 0.5, n: int = 4096):
    def tamper(step: Path) -> None:
        p = step / name
        raw = bytearray(p.read_bytes())
        i = int(len(raw) * at)
        raw[i : i + n] = bytes(b ^ 0x5A for b in raw[i : i + n])
        p.write_bytes(bytes(raw))

    return tamper


def _truncate(name: str):
    def tamper(step: Path) -> None:
        p = step / name
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    return tamper


@case("checkpoint")
def ckpt_same_size_corruption(ctx: Ctx) -> Outcome:
    return _resumes_previous(ctx, "flip", _flip("__0_0.distcp"), "__0_0.distcp: checksum mismatch")


@case("checkpoint")
def ckpt_truncated_data(ctx: Ctx) -> Outcome:
    return _resumes_previous(ctx, "trunc", _truncate("__0_0.distcp"), "__0_0.distcp")


@case("checkpoint")
def ckpt_no_complete_marker(ctx: Ctx) -> Outcome:
    return _resumes_previous(ctx, "nomark", lambda s: (s / "COMPLETE").unlink(), "COMPLETE")


@case("checkpoint")
def ckpt_edited_meta_json(ctx: Ctx) -> Outcome:
    def tamper(step: Path) -> None:
        meta = json.loads((step / "meta.json").read_text())
        meta["samples"] += 1
        (step / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + " " * 0)

    return _resumes_previous(ctx, "meta", tamper, "meta.json")


@case("checkpoint")
def ckpt_corrupt_metadata_bytes(ctx: Ctx) -> Outcome:
    return _resumes_previous(ctx, "mdflip", _flip(".metadata", 0.5, 64), ".metadata: checksum mismatch")


@case("checkpoint")
def ckpt_malicious_rng_resealed(ctx: Ctx) -> Outcome:
    marker = ctx.marker("rng")

    def tamper(step: Path) -> None:
        torch.save(Planted(marker), step / "rng_rank0.pt")
        _reseal(step)

    return _resumes_previous(ctx, "rng", tamper, "rng_rank0.pt: not an RNG state")


@case("checkpoint")
def ckpt_malicious_metadata_resealed(ctx: Ctx) -> Outcome:
    marker = ctx.marker("metadata_sealed")

    def tamper(step: Path) -> None:
        (step / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
        _reseal(step)

    return _resumes_previous(ctx, "mdsealed", tamper, "refused to load 'builtins.exec'")


@case("checkpoint")
def ckpt_malicious_metadata_no_manifest(ctx: Ctx) -> Outcome:
    marker = ctx.marker("metadata_plain")

    def tamper(step: Path) -> None:
        (step / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
        (step / "manifest.json").unlink(missing_ok=True)

    return _resumes_previous(ctx, "mdplain", tamper, "manifest.json: missing")


def _plant(folder: Path, marker: Path, step: int, sealed: bool) -> None:
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    torch.save(Planted(marker), folder / "rng_rank0.pt")
    (folder / "__0_0.distcp").write_bytes(b"\0" * 4096)
    (folder / "meta.json").write_text(json.dumps({"step": step, "epoch": 0}))
    (folder / "COMPLETE").write_text(f"{step}\n")
    if sealed:
        _reseal(folder)


@case("checkpoint")
def ckpt_planted_in_resume_folder(ctx: Ctx) -> Outcome:
    marker = ctx.marker("resume_folder")
    folder = ctx.path("downloaded")
    _plant(folder / "step_000000005", marker, 5, sealed=True)
    _plant(folder / "step_000000006", marker, 6, sealed=False)
    return expect_error(train(ctx, ctx.path("runs_dl"), "dl", f"trainer.resume_from={folder}"),
                        r"no complete checkpoint there.*refused to load 'builtins.exec'")


@case("checkpoint")
def ckpt_planted_in_own_folder_fresh_run(ctx: Ctx) -> Outcome:
    marker = ctx.marker("own_folder")
    runs = ctx.path("runs_own")
    own = runs / "own" / "checkpoints"  # the run's own folder: fixed, so the planted files are in it
    _plant(own / "step_000000099", marker, 99, sealed=True)
    _plant(own / "step_000000098", marker, 98, sealed=False)
    r = train(ctx, runs, "own", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=1", f"trainer.checkpoint_dir={own}")
    return expect_ok(r, lambda: ((own / "step_000000004" / "manifest.json").exists(), "own step 4 kept, planted ones left unread"))


@case("checkpoint")
def ckpt_planted_then_resume_latest(ctx: Ctx) -> Outcome:
    marker = ctx.marker("latest")
    runs = ctx.path("runs_latest")
    r = train(ctx, runs, "latest", "trainer.checkpoint_every=2")
    own = launch(runs, "latest") / "checkpoints"  # resume_from=latest continues this launch
    _plant(own / "step_000000099", marker, 99, sealed=True)
    r = train(ctx, runs, "latest", "trainer.checkpoint_every=2", "trainer.resume_from=latest")
    return expect_ok(r, lambda: (f"resumed from {own / 'step_000000004'}" in r.out, "planted step 99 skipped, own step 4 used"))


@case("checkpoint")
def ckpt_old_format_refused(ctx: Ctx) -> Outcome:
    folder, _ = _copy_base(ctx, "old")
    for step in folder.iterdir():
        (step / "manifest.json").unlink(missing_ok=True)  # as an older CompactRec wrote them
    return expect_error(train(ctx, ctx.path("runs_old"), "old", f"trainer.resume_from={folder / 'step_000000004'}"),
                        r"manifest.json: missing; a checkpoint without CompactRec's manifest .* is refused rather than unpickled")


@case("checkpoint")
def ckpt_keep_one_keeps_the_final(ctx: Ctx) -> Outcome:
    runs = ctx.path("runs_keep1")
    r = train(ctx, runs, "keep1", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=1")
    own = launch(runs, "keep1") / "checkpoints"

    def ok():
        names = sorted(p.name for p in own.iterdir()) if own.exists() else []
        return names == ["step_000000004"], f"left: {names}"

    outcome = expect_ok(r, ok)
    return ("lost", outcome[1]) if outcome[0] == "silent" else outcome


@case("checkpoint")
def ckpt_kill_between_replace_renames(ctx: Ctx) -> Outcome:
    """Re-saving a step while the process dies between the two renames (simulated)."""
    from compactrec.trainer import checkpoint as ck

    class Engine:
        def __init__(self, v: float) -> None:
            self.w, self.model = torch.full((8, 8), v), torch.nn.Linear(1, 1)

        def state_dict(self):
            return {"model": {"w": self.w}}

        def load_state_dict(self, s):
            self.w.copy_(s["model"]["w"])

        def save_files(self, f):
            pass

        def load_files(self, f):
            pass

    root = ctx.path("replace")
    ck.save_checkpoint(root, Engine(1.0), ck.TrainState(step=6, epoch=0))
    real = Path.rename

    def dying(self, target):
        if self.name == ".step_000000006.tmp":
            raise KeyboardInterrupt
        return real(self, target)

    Path.rename = dying
    try:
        ck.save_checkpoint(root, Engine(2.0), ck.TrainState(step=6, epoch=0))
    except KeyboardInterrupt:
        pass
    finally:
        Path.rename = real
    found = ck.latest_checkpoint(root)
    if found is None:
        return "lost", "no checkpoint of step 6 left"
    e = Engine(0.0)
    ck.load_checkpoint(found, e)
    return ("recovered", f"the previous step 6 is usable ({found.name})") if float(e.w[0, 0]) == 1.0 else ("silent", "wrong weights")


