"""The training recipe: an eval after every epoch (and every N steps), the best one's
metrics and weights kept, TensorBoard eval curves, and the lr warmup / decay schedule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest

from compactrec.cli import main
from compactrec.trainer.config import OptimConfig
from compactrec.trainer.schedule import lr_factor

FULL = str(Path(__file__).parents[2] / "configs" / "methods" / "full.yaml")
STEPS_PER_EPOCH = 4096 // 128


def _train(data: Path, runs: Path, name: str, *extra: str) -> Dict:
    args = ["train", FULL, f"data.path={data}", f"runs_dir={runs}", f"name={name}", "trainer.launcher=local",
            "cluster.num_workers=1", "trainer.progress_bar=false", "data.batch_size=128", "data.eval_batch_size=512",
            *extra]
    assert main(args) == 0
    return json.loads((runs / name / "latest" / "metrics.json").read_text())


def _scalars(run: Path, tag: str) -> List[tuple]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_every_epoch_is_evaluated_and_the_best_one_is_kept(tiny_data: Path, tmp_path: Path):
    # A high table lr overfits the full table after its first epoch: the last epoch is not the best.
    m = _train(tiny_data, tmp_path, "over", "trainer.epochs=3", "optim.sparse_lr=0.5", "optim.dense_lr=0.05")
    evals = m["evals"]
    assert [e["epoch"] for e in evals] == [1, 2, 3]
    assert [e["step"] for e in evals] == [STEPS_PER_EPOCH * k for k in (1, 2, 3)]
    assert evals[-1]["auc"] == m["auc"]  # the final metrics are the last epoch's eval
    best = max(evals, key=lambda e: e["auc"])
    assert best["epoch"] < 3, "the construction must overfit: the last epoch should not be the best"
    assert m["best_epoch"] == best["epoch"] and m["best"]["auc"] == best["auc"] and m["best"]["auc"] > m["auc"]
    run = (tmp_path / "over" / "latest").resolve()
    saved = Path(m["best"]["checkpoint"])
    assert saved.parent == run / "best" and [p.name for p in saved.parent.iterdir()] == [saved.name]
    # TensorBoard: one eval/auc point per epoch, at the step of each eval, with its value
    assert _scalars(run, "eval/auc") == [(e["step"], pytest.approx(e["auc"], rel=1e-6)) for e in evals]
    # the kept weights are the best epoch's: resuming from them without training evaluates the same AUC
    again = _train(tiny_data, tmp_path, "from_best", "trainer.epochs=3", "optim.sparse_lr=0.5", "optim.dense_lr=0.05",
                   f"trainer.resume_from={saved}", f"trainer.epochs={best['epoch']}",
                   "trainer.resume_changes=[trainer.epochs]")
    assert again["steps"] == best["step"] and again["auc"] == pytest.approx(best["auc"], abs=1e-7)


def test_eval_every_steps_adds_evaluations_inside_the_epoch(tiny_data: Path, tmp_path: Path):
    m = _train(tiny_data, tmp_path, "steps", "trainer.eval_every_steps=12", "trainer.keep_best=false")
    assert [(e["step"], e["end_of_epoch"]) for e in m["evals"]] == [(12, False), (24, False), (32, True)]
    assert not (tmp_path / "steps" / "latest" / "best").exists()
    assert m["best"]["step"] == max(m["evals"], key=lambda e: e["auc"])["step"]


def test_lr_factor_warms_up_then_decays():
    cfg = OptimConfig(warmup_steps=4, decay="linear", decay_steps=14, min_lr_ratio=0.1)
    assert [lr_factor(cfg, s, 100) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(cfg, 9, 100) == pytest.approx(1 - 0.9 * 0.5) and lr_factor(cfg, 50, 100) == pytest.approx(0.1)
    cos = OptimConfig(decay="cosine")  # decays to 0 at the run's last step
    assert lr_factor(cos, 0, 11) == 1.0 and lr_factor(cos, 5, 11) == pytest.approx(0.5) and lr_factor(cos, 10, 11) == 0.0
    assert lr_factor(OptimConfig(), 7, 10) == 1.0


def test_the_schedule_sets_the_lr_of_dense_and_table_optimizers(tiny_data: Path, tmp_path: Path):
    # lr -> 0 after the first step: the weights after 4 steps must equal those after 1 step,
    # which holds only if the tables' fused optimizer follows the schedule too (no lag).
    zero = ["optim.decay=linear", "optim.decay_steps=1", "optim.min_lr_ratio=0", "trainer.log_every=1"]
    decayed = _train(tiny_data, tmp_path, "decayed", "trainer.max_steps=4", *zero)
    one = _train(tiny_data, tmp_path, "one", "trainer.max_steps=1")
    four = _train(tiny_data, tmp_path, "four", "trainer.max_steps=4")
    assert decayed["weights_digest"] == one["weights_digest"] != four["weights_digest"]
    lrs = _scalars((tmp_path / "decayed" / "latest").resolve(), "train/lr")
    assert lrs == [(1, pytest.approx(0.02)), (2, 0.0), (3, 0.0), (4, 0.0)]  # logged after step s: lr of step s - 1
