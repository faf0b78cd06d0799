"""Trial cases of group resume (benchmarks/trial.py): resumes with other settings: refused with
the keys named; moved data and allowed changes resume."""

from __future__ import annotations

import shutil
from pathlib import Path

from trial_harness import CASES, Ctx, Outcome, case, expect_error, expect_ok, metrics, train


def _resume_case(name: str, pattern: str, *overrides: str, data=None):
    def fn(ctx: Ctx) -> Outcome:
        ckpts, _ = ctx.base()
        root = data(ctx) if data else None
        return expect_error(train(ctx, ctx.path(f"runs_{name}"), name, f"trainer.resume_from={ckpts}", *overrides, data=root), pattern)

    return fn


def _other_data(ctx: Ctx) -> Path:
    from tests.conftest import make_data

    root = ctx.work / "data_seed1"
    if not (root / "_manifest.json").exists():
        make_data(root, seed=1)
    return root


CASES += [
    ("resume_other_kind", "resume", _resume_case("kind", r"embedding.kind: checkpoint 'hash', now 'qr'", "embedding.kind=qr"), False),
    ("resume_other_ratio", "resume", _resume_case("ratio", r"compression.ratio: checkpoint 16.0, now 8.0", "compression.ratio=8"), False),
    ("resume_other_dim", "resume", _resume_case("dim", r"model.embedding_dim: checkpoint 32, now 16", "model.embedding_dim=16", "model.dense_arch=[64,16]"), False),
    ("resume_other_hash_seed", "resume", _resume_case("seed", r"embedding.hash.seed: checkpoint 0, now 1", "embedding.hash.seed=1"), False),
    ("resume_other_data_same_layout", "resume", _resume_case("data", r"data.identity: other data", data=_other_data), False),
    ("resume_more_epochs_unasked", "resume", _resume_case("epochs", r"trainer.epochs: checkpoint 1, now 2", "trainer.epochs=2"), False),
    ("resume_other_sparse_optimizer", "resume", _resume_case("sgd", r"optim.sparse: checkpoint 'rowwise_adagrad', now 'sgd'", "optim.sparse=sgd"), False),
]


@case("resume")
def resume_moved_data(ctx: Ctx) -> Outcome:
    ckpts, base = ctx.base()
    moved = ctx.path("data_moved")
    shutil.copytree(ctx.data, moved)
    runs = ctx.path("runs_moved")
    r = train(ctx, runs, "moved", f"trainer.resume_from={ckpts}", data=moved)
    return expect_ok(r, lambda: (metrics(runs, "moved")["weights_digest"] == base["weights_digest"], "same model, data at another path"))


@case("resume")
def resume_more_epochs_allowed(ctx: Ctx) -> Outcome:
    ckpts, _ = ctx.base()
    runs = ctx.path("runs_more")
    r = train(ctx, runs, "more", f"trainer.resume_from={ckpts}", "trainer.epochs=2", "trainer.resume_changes=[trainer.epochs]")
    return expect_ok(r, lambda: (metrics(runs, "more")["steps"] == 8, f"steps {metrics(runs, 'more')['steps']}"))


@case("resume")
def resume_from_missing_folder(ctx: Ctx) -> Outcome:
    return expect_error(train(ctx, ctx.path("runs_nofolder"), "nf", f"trainer.resume_from={ctx.work / 'nowhere'}"),
                        r"trainer.resume_from=.*nowhere: no complete checkpoint there")


