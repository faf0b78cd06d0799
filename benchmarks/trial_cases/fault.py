"""Trial cases of group fault (benchmarks/trial.py): killed workers: exact recovery under Ray and
the local launcher, and the message of a run that fails for good."""

from __future__ import annotations

from pathlib import Path

from trial_harness import HASH_CONFIG, TINY, Ctx, Outcome, Run, case, expect_error, expect_ok, metrics, sub


def _digest_run(ctx: Ctx, runs: Path, name: str, *extra: str) -> Run:
    return sub("train", HASH_CONFIG, *TINY[:4], f"data.path={ctx.data}", f"runs_dir={runs}", f"name={name}",
               "cluster.num_workers=2", "trainer.checkpoint_every=2", "trainer.max_steps=6", *extra)


@case("fault", slow=True)
def fault_ray_worker_killed_recovers_exactly(ctx: Ctx) -> Outcome:
    runs = ctx.path("runs_ray")
    clean = _digest_run(ctx, runs, "clean", "trainer.launcher=local")
    if clean.rc != 0:
        return "crash", "clean run failed: " + clean.err[-200:]
    r = _digest_run(ctx, runs, "faulty", "trainer.launcher=ray", "trainer.fault_at_step=3", "trainer.max_failures=1")
    return expect_ok(r, lambda: (metrics(runs, "faulty")["weights_digest"] == metrics(runs, "clean")["weights_digest"],
                                 "weights bitwise equal to the uninterrupted run"))


@case("fault", slow=True)
def fault_local_worker_killed_recovers_exactly(ctx: Ctx) -> Outcome:
    runs = ctx.path("runs_localfault")
    clean = _digest_run(ctx, runs, "clean", "trainer.launcher=local")
    r = _digest_run(ctx, runs, "faulty", "trainer.launcher=local", "trainer.fault_at_step=3", "trainer.max_failures=1")
    if clean.rc != 0:
        return "crash", "clean run failed"
    return expect_ok(r, lambda: (metrics(runs, "faulty")["weights_digest"] == metrics(runs, "clean")["weights_digest"],
                                 "weights bitwise equal to the uninterrupted run"))


@case("fault", slow=True)
def fault_ray_failure_message(ctx: Ctx) -> Outcome:
    runs = ctx.path("runs_raydies")
    r = _digest_run(ctx, runs, "dies", "trainer.launcher=ray", "trainer.fault_at_step=3", "trainer.max_failures=0")
    return expect_error(r, r"rank 1 on node \S+ \(\S+, pid \d+\) died after step 3")
