"""Trial cases of group config (benchmarks/trial.py): knobs out of range, run names, and which
input a bad value is blamed on."""

from __future__ import annotations

from typing import Callable

from trial_harness import CASES, Ctx, Outcome, case, cli, expect_error, train


def _knob(override: str, pattern: str) -> Callable[[Ctx], Outcome]:
    def fn(ctx: Ctx) -> Outcome:
        runs = ctx.path("knob_runs")
        return expect_error(train(ctx, runs, "knob", override), pattern)

    return fn


for _name, _override, _pattern in [
    ("batch_size_0", "data.batch_size=0", r"override 'data.batch_size=0': data.batch_size=0: must be >= 1"),
    ("batch_size_negative", "data.batch_size=-5", r"override 'data.batch_size=-5'.*must be >= 1"),
    ("eval_batch_size_0", "data.eval_batch_size=0", r"data.eval_batch_size=0: must be >= 1"),
    ("num_workers_0", "cluster.num_workers=0", r"override 'cluster.num_workers=0'.*must be >= 1"),
    ("keep_checkpoints_0", "trainer.keep_checkpoints=0", r"trainer.keep_checkpoints=0: must be >= 1"),
    ("log_every_0", "trainer.log_every=0", r"trainer.log_every=0: must be >= 1"),
    ("ratio_negative", "compression.ratio=-1", r"compression.ratio=-1.0: must be > 0"),
    ("name_climbs_out", "name=../../escaped", r"name='../../escaped': must be a relative path inside runs_dir"),
    ("name_absolute", "name=/tmp/escaped", r"name='/tmp/escaped'"),
    ("kind_bad_override", "embedding.kind=bogus", r"^compactrec train: error: override 'embedding.kind=bogus': 'embedding.kind' is 'bogus'"),
    ("dim_mismatch", "model.embedding_dim=8", r"model.dense_arch must end in model.embedding_dim"),
    ("unknown_key", "trainer.epochz=2", r"override 'trainer.epochz=2': bad key 'trainer.epochz'"),
]:
    CASES.append((f"config_{_name}", "config", _knob(_override, _pattern), False))


@case("config")
def config_yaml_typo(ctx: Ctx) -> Outcome:
    bad = ctx.work / "typo.yaml"
    bad.write_text("data:\n  batch_size: lots\n")
    return expect_error(cli("train", str(bad)), rf"{bad}: bad key 'data.batch_size'")


@case("config")
def config_yaml_zero_batch(ctx: Ctx) -> Outcome:
    bad = ctx.work / "zero.yaml"
    bad.write_text("data:\n  batch_size: 0\n")
    return expect_error(cli("train", str(bad), f"data.path={ctx.data}"), rf"{bad}: data.batch_size=0: must be >= 1")


@case("config")
def config_yaml_syntax(ctx: Ctx) -> Outcome:
    bad = ctx.work / "syntax.yaml"
    bad.write_text("data: [unclosed\n")
    return expect_error(cli("train", str(bad)), rf"{bad}: not valid YAML")


@case("config")
def config_missing_file(ctx: Ctx) -> Outcome:
    return expect_error(cli("train", str(ctx.work / "nope.yaml")), r"nope.yaml: config file not found")


