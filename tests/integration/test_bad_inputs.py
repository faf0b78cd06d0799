"""Bad data through the real command line: a non-finite dense value stops the run with the
file, row group, row and column named (it used to train to NaN and exit 0), and a bad eval
file stops it before the first step instead of after the whole training."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compactrec.cli import main
from compactrec.data.reader.manifest import read_manifest

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "methods" / "hash.yaml")
TINY = ["trainer.progress_bar=false", "trainer.tensorboard=false", "data.batch_size=128", "data.eval_batch_size=512",
        "trainer.launcher=local", "cluster.num_workers=1", "trainer.checkpoint_every=1"]


def _with_inf(tiny_data: Path, tmp_path: Path, split: str, row: int) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    path = root / read_manifest(root).splits[split].files[-1]
    t = pq.read_table(path)
    x = t.column("int_4").to_numpy(zero_copy_only=False).astype(np.float32)
    x[row] = np.inf
    pq.write_table(t.set_column(t.schema.get_field_index("int_4"), "int_4", pa.array(x)), path, row_group_size=512)
    return root


def test_an_inf_in_training_data_stops_the_run_with_its_place_named(tiny_data: Path, tmp_path: Path, capsys):
    root = _with_inf(tiny_data, tmp_path, "train", 1500)
    rc = main(["train", CONFIG, *TINY, f"data.path={root}", f"runs_dir={tmp_path / 'runs'}", "name=inf"])
    err = capsys.readouterr().err
    assert rc == 2 and "part-00001.parquet row group 2: column 'int_4' row 476 is inf" in err
    assert not (tmp_path / "runs" / "inf" / "metrics.json").exists()


def test_a_bad_eval_file_stops_the_run_before_the_first_step(tiny_data: Path, tmp_path: Path, capsys):
    root = _with_inf(tiny_data, tmp_path, "eval", 900)
    rc = main(["train", CONFIG, *TINY, f"data.path={root}", f"runs_dir={tmp_path / 'runs'}", "name=bad_eval"])
    err = capsys.readouterr().err
    assert rc == 2 and "eval/part-00000.parquet row group 1: column 'int_4' row 388 is inf" in err
    assert not (tmp_path / "runs" / "bad_eval" / "checkpoints").exists()  # checkpoint_every=1: no step ran
