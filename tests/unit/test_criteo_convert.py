"""Criteo TSV -> Parquet: exact rows (empty fields, negatives, short and upper-case hex),
malformed lines reported with file and line (or skipped and counted), plain == .gz, a
killed conversion resumed to identical files, the day-based splits, hashed and
frequency-mapped ids, the manifest, and the `compactrec convert` parser."""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from compactrec.data.convert.cli import add_parser
from compactrec.data.convert.criteo_convert import ConvertError, ConvertOptions, convert_criteo
from compactrec.data.convert.freq_count import count_criteo
from compactrec.data.convert.id_map import IdMapSpec
from compactrec.data.reader.manifest import read_manifest
from compactrec.data.convert.pieces import MalformedLineError
from compactrec.data.reader.parquet import ParquetReader

BASE = dict(piece_bytes=3000, block_bytes=700, row_group_rows=16, progress=False)  # many pieces and blocks
SMALL = dict(BASE, id_map=IdMapSpec("raw", max_ids=None))  # raw ids: the rows can be checked against the text
BAD = {  # line index -> (malformed text, reason pattern)
    7: ("1\t2\t3", "3 field(s), expected 40"),
    19: ("", "empty line"),
    33: ("0\t" + "\t".join(["1"] * 13) + "\t" + "\t".join(["zz00ff00"] + ["0000000a"] * 25), "cat_0 is 'zz00ff00'"),
    58: ("1\t" + "\t".join(["x7"] + ["1"] * 12) + "\t" + "\t".join(["0000000a"] * 26), "int_0 is 'x7'"),
    71: ("2\t" + "\t".join(["1"] * 13) + "\t" + "\t".join(["0000000a"] * 26), "label is '2'"),
    90: ("0\t" + "\t".join(["1"] * 13) + "\t" + "\t".join(["123456789"] + ["0000000a"] * 25), "cat_0 is '123456789'"),
}


def _good_line(rng: np.random.Generator) -> str:
    label = str(int(rng.integers(0, 2)))
    dense = ["" if rng.random() < 0.2 else str(int(rng.integers(-3, 60))) for _ in range(13)]
    cats = []
    for f in range(26):
        r = rng.random()
        v = int(rng.zipf(1.5)) % (3 + 5 * f) * 0x01000193 % (1 << 32)  # skewed, a few values per feature
        cats.append("" if r < 0.1 else ("%X" % v if r < 0.15 else "%x" % v if r < 0.2 else "%08x" % v))
    return "\t".join([label, *dense, *cats])


def write_tsv(path: Path, lines: int, seed: int = 0, bad: Optional[dict] = None, gz: bool = False) -> List[str]:
    """A Criteo-format file; returns its lines (bad ones included)."""
    rng = np.random.default_rng(seed)
    text = [(bad or {}).get(i, (None,))[0] or ("" if i in (bad or {}) else _good_line(rng)) for i in range(lines)]
    data = ("\n".join(text) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return text


def expected_rows(lines: List[str]) -> List[Tuple]:
    """The reference: (label, dense..., ids...) of each good line, per-row Python."""
    rows = []
    for line in lines:
        f = line.split("\t")
        try:
            assert len(f) == 40 and f[0] in ("0", "1")
            dense = [None if x == "" else float(int(x)) for x in f[1:14]]
            assert all(len(x) <= 8 for x in f[14:])
            ids = [0 if x == "" else int(x, 16) + 1 for x in f[14:]]
        except (AssertionError, ValueError):
            continue
        rows.append((int(f[0]), *dense, *ids))
    return rows


def read_rows(root: Path, split: str = "train") -> List[Tuple]:
    m = read_manifest(root)
    rows = []
    for f in m.splits[split].files:
        t = pq.read_table(root / f)
        rows += list(zip(*[t.column(c).to_pylist() for c in t.column_names]))
    return rows


def test_converts_tsv_to_exact_rows_and_reports_malformed_lines(tmp_path: Path):
    lines = write_tsv(tmp_path / "raw" / "day_0", 120, bad=BAD)
    m = convert_criteo([str(tmp_path / "raw" / "day_0")], tmp_path / "out", ConvertOptions(on_error="skip", **SMALL))
    want = expected_rows(lines)
    assert len(want) == 120 - len(BAD)
    assert read_rows(tmp_path / "out") == want
    assert m.splits["train"].rows == len(want) and len(m.splits["train"].files) > 3
    cards = [max(r[14 + f] for r in want) + 1 for f in range(26)]
    assert m.schema.cardinalities == cards
    bad = m.stats["malformed"]
    assert bad["count"] == len(BAD) and bad["by_file"] == {str(tmp_path / "raw" / "day_0"): len(BAD)}
    assert [e["line"] for e in bad["examples"]] == [i + 1 for i in sorted(BAD)]
    for e, i in zip(bad["examples"], sorted(BAD)):
        assert BAD[i][1] in e["reason"], (e, BAD[i])
    est = m.stats["distinct"]["estimates"]
    exact = [len({r[14 + f] for r in want if r[14 + f]}) for f in range(26)]
    assert all(abs(est[f"cat_{f}"] - exact[f]) <= max(1, 0.02 * exact[f]) for f in range(26))
    cols = m.stats["columns"]["dense"]["int_0"]
    assert cols["nulls"] == sum(r[1] is None for r in want) and cols["min"] == min(r[1] for r in want if r[1] is not None)
    # the converted data feeds the reader: ids under the manifest's cardinalities, log1p of raw
    reader = ParquetReader(m.split_files(tmp_path / "out", "train"), m.schema, 10, validate=True)
    first = next(iter(reader))
    raw = [r[1] for r in want[:10]]
    assert first.dense_features[:, 0].tolist() == pytest.approx([float(np.log1p(max(x or 0, 0))) for x in raw])


def test_malformed_line_fails_with_file_and_line(tmp_path: Path):
    for gz in (False, True):
        path = tmp_path / "raw" / ("day_5.gz" if gz else "day_5")
        write_tsv(path, 120, bad={90: BAD[90]}, gz=gz)
        with pytest.raises(MalformedLineError, match=rf"day_5{'.gz' if gz else ''}:91: cat_0 is '123456789'"):
            convert_criteo([str(path)], tmp_path / f"out{gz}", ConvertOptions(**SMALL))


def test_plain_and_gz_inputs_give_byte_identical_shards(tmp_path: Path):
    write_tsv(tmp_path / "a" / "day_0", 150, seed=3)
    write_tsv(tmp_path / "b" / "day_0.gz", 150, seed=3, gz=True)
    convert_criteo([str(tmp_path / "a" / "day_0")], tmp_path / "oa", ConvertOptions(**SMALL))
    convert_criteo([str(tmp_path / "b" / "day_0.gz")], tmp_path / "ob", ConvertOptions(**SMALL))
    files = sorted(p.relative_to(tmp_path / "oa") for p in (tmp_path / "oa").glob("train/*.parquet"))
    assert files == sorted(p.relative_to(tmp_path / "ob") for p in (tmp_path / "ob").glob("train/*.parquet"))
    assert all((tmp_path / "oa" / f).read_bytes() == (tmp_path / "ob" / f).read_bytes() for f in files)


def _shards(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/*.parquet"))}


@pytest.mark.parametrize("gz", [False, True])
def test_killed_conversion_resumes_to_identical_files(tmp_path: Path, gz: bool):
    name = "day_1.gz" if gz else "day_1"
    write_tsv(tmp_path / "raw" / name, 200, seed=1, bad={50: BAD[7]}, gz=gz)
    opts = ConvertOptions(on_error="skip", **SMALL)
    convert_criteo([str(tmp_path / "raw" / name)], tmp_path / "ref", opts)
    out = tmp_path / "out"
    convert_criteo([str(tmp_path / "raw" / name)], out, opts)
    # the kill: piece 2 was being written (temp file, no marker), piece 4's shard is gone
    (out / "train" / "day_1-part-00002.parquet").rename(out / "train" / ".day_1-part-00002.parquet.x1y2.tmp")
    (out / ".convert" / "pieces" / "day_1-part-00002.json").unlink()
    (out / "train" / "day_1-part-00004.parquet").unlink()
    (out / "_manifest.json").unlink()
    kept = (out / "train" / "day_1-part-00001.parquet").stat().st_mtime_ns
    m = convert_criteo([str(tmp_path / "raw" / name)], out, opts)
    assert _shards(out) == _shards(tmp_path / "ref")
    assert not list(out.glob("*/.*.tmp"))
    assert (out / "train" / "day_1-part-00001.parquet").stat().st_mtime_ns == kept  # complete: not redone
    assert (out / "_manifest.json").read_text() == (tmp_path / "ref" / "_manifest.json").read_text()
    assert m.stats["malformed"]["count"] == 1 and m.stats["malformed"]["examples"][0]["line"] == 51


def test_rerun_with_other_options_is_refused(tmp_path: Path):
    write_tsv(tmp_path / "day_0", 30)
    convert_criteo([str(tmp_path / "day_0")], tmp_path / "out", ConvertOptions(**SMALL))
    with pytest.raises(ConvertError, match="other options"):
        convert_criteo([str(tmp_path / "day_0")], tmp_path / "out", ConvertOptions(**{**SMALL, "row_group_rows": 8}))


def test_criteo_tb_split_cuts_day_23_in_halves(tmp_path: Path):
    day0 = write_tsv(tmp_path / "raw" / "day_0", 60, seed=1)
    day23 = write_tsv(tmp_path / "raw" / "day_23.gz", 101, seed=2, bad={10: BAD[7]}, gz=True)
    m = convert_criteo([str(tmp_path / "raw" / "day_0"), str(tmp_path / "raw" / "day_23.gz")], tmp_path / "out",
                       ConvertOptions(split="criteo_tb", on_error="skip", **SMALL))
    assert sorted(m.splits) == ["test", "train", "val"]
    assert read_rows(tmp_path / "out", "train") == expected_rows(day0)
    assert read_rows(tmp_path / "out", "val") == expected_rows(day23[:50])  # lines 0-49 (one malformed)
    assert read_rows(tmp_path / "out", "test") == expected_rows(day23[50:])
    with pytest.raises(ConvertError, match="exactly one input"):
        convert_criteo([str(tmp_path / "raw" / "day_0"), str(tmp_path / "raw" / "day_23.gz")], tmp_path / "o2",
                       ConvertOptions(split="kaggle", **SMALL))
    (tmp_path / "raw" / "train.txt").write_text("")
    with pytest.raises(ConvertError, match="day_0 .. day_23"):
        convert_criteo([str(tmp_path / "raw" / "train.txt")], tmp_path / "o3", ConvertOptions(split="criteo_tb", **SMALL))


def test_kaggle_split_holds_out_the_last_seventh(tmp_path: Path):
    lines = write_tsv(tmp_path / "train.txt", 140, seed=4)
    m = convert_criteo([str(tmp_path / "train.txt")], tmp_path / "out", ConvertOptions(split="kaggle", **SMALL))
    assert read_rows(tmp_path / "out", "train") == expected_rows(lines[:120])
    assert read_rows(tmp_path / "out", "test") == expected_rows(lines[120:])
    assert m.splits["train"].files[0].startswith("train/train-part-")


def test_hashed_ids_match_compactrec_hashing(tmp_path: Path):
    from compactrec.hashing import hash_mod

    lines = write_tsv(tmp_path / "day_0", 80, seed=5)
    m = convert_criteo([str(tmp_path / "day_0")], tmp_path / "out", ConvertOptions(id_map=IdMapSpec("hash", max_ids=50), **BASE))
    want = expected_rows(lines)
    got = read_rows(tmp_path / "out")
    raw = torch.tensor([r[14:] for r in want]) - 1  # raw values, -1 = empty
    ids = torch.where(raw < 0, 0, hash_mod(raw.clamp(min=0), 49) + 1)
    assert [list(r[14:]) for r in got] == ids.tolist()
    assert all(1 <= c <= 50 for c in m.schema.cardinalities)
    assert m.stats["id_map"]["kind"] == "hash"


def test_frequency_map_ranks_ids_by_count_and_caps_them(tmp_path: Path):
    lines = write_tsv(tmp_path / "day_0", 150, seed=6)
    summary = count_criteo([str(tmp_path / "day_0")], str(tmp_path / "counts"), piece_bytes=3000, block_bytes=700, progress=False)
    want = expected_rows(lines)
    for max_ids in (None, 4):
        out = tmp_path / f"out{max_ids}"
        m = convert_criteo([str(tmp_path / "day_0")], out, ConvertOptions(
            id_map=IdMapSpec("freq", max_ids=max_ids, counts_dir=str(tmp_path / "counts")), **BASE))
        got = read_rows(out)
        for f in range(26):
            raw = [r[14 + f] - 1 for r in want if r[14 + f]]
            values, counts = np.unique(raw, return_counts=True)
            ranked = [int(v) for _, v in sorted(zip(-counts, values))]  # count descending, ties by value
            k = len(ranked) if max_ids is None else min(len(ranked), max_ids - 2)
            rank = {v: i + 1 if i < k else k + 1 for i, v in enumerate(ranked)}
            assert [r[14 + f] for r in got] == [rank[r[14 + f] - 1] if r[14 + f] else 0 for r in want], f
            assert summary["features"][f"cat_{f}"]["distinct"] == len(ranked)
            assert m.schema.cardinalities[f] == max(r[14 + f] for r in got) + 1
    assert m.stats["id_map"]["order"].startswith("frequency rank")


def _cli(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="compactrec")
    add_parser(p.add_subparsers(dest="command", required=True))
    ns = p.parse_args(args)
    return ns.fn(ns)


def test_convert_command_on_two_workers(tmp_path: Path, capsys):
    lines = write_tsv(tmp_path / "day_0", 150, seed=7, bad={5: BAD[7]})
    write_tsv(tmp_path / "day_23", 40, seed=8)
    base = ["convert", "criteo", str(tmp_path / "day_0"), str(tmp_path / "day_23"), "--out", str(tmp_path / "out"),
            "--split", "criteo_tb", "--workers", "2", "--shard-mb", "0.003", "--block-mb", "0.001",
            "--row-group-rows", "16", "--no-progress", "--id-map", "raw"]  # raw: rows checked against the text
    assert _cli(base) == 2
    assert f"day_0:6: 3 field(s), expected 40" in capsys.readouterr().err
    assert _cli(base + ["--on-error", "skip"]) == 0
    out = capsys.readouterr()
    assert "train: 149 rows" in out.out and "day_0:6:" in out.err
    assert read_rows(tmp_path / "out") == expected_rows(lines)
    assert _cli(["convert", "criteo", str(tmp_path / "day_0"), "--out", str(tmp_path / "o2"), "--id-map", "hash"]) == 2
    assert "--max-ids" in capsys.readouterr().err
    assert _cli(["convert", "criteo-count", str(tmp_path / "day_0"), "--out", str(tmp_path / "c"), "--on-error", "skip",
                 "--workers", "1", "--no-progress"]) == 0
    assert "counted 149 rows" in capsys.readouterr().out
    os.remove(tmp_path / "c" / "_counts.json")
    assert _cli(["convert", "criteo", str(tmp_path / "day_0"), "--out", str(tmp_path / "o3"), "--freq-map", str(tmp_path / "c")]) == 2
    assert "criteo-count" in capsys.readouterr().err


def test_default_options_size_tables_to_the_distinct_ids(tmp_path: Path, capsys):
    """8-hex ids (values up to 2^32) converted with no id-map option: a frequency map counted
    by the conversion, every table sized to its distinct values, and a line saying so."""
    lines = write_tsv(tmp_path / "day_0", 200, seed=3)
    args = ["convert", "criteo", str(tmp_path / "day_0"), "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"]
    assert _cli(args) == 0
    said = capsys.readouterr().out
    m = read_manifest(tmp_path / "out")
    raw = [[ln.split("\t")[14 + f] for ln in lines] for f in range(26)]
    distinct = [len({int(v, 16) for v in col if v}) for col in raw]
    assert max(int(v, 16) for col in raw for v in col if v) > 1 << 24  # real Criteo-like hex values
    assert m.schema.cardinalities == [d + 1 for d in distinct]  # ids 1..distinct, 0 = empty
    assert m.stats["id_map"]["kind"] == "freq" and m.stats["id_map"]["max_ids"] == 10_000_000
    assert "id map: frequency map" in said and f"cat_25 {distinct[25] + 1:,}" in said  # rows: ids + the empty id
    # a cap: the most frequent values keep their own ids, the rest share one
    assert _cli([*args[:4], str(tmp_path / "capped"), "--max-ids", "6", "--id-map", "freq", "--no-progress"]) == 0
    capped = read_manifest(tmp_path / "capped").schema.cardinalities
    assert capped == [min(d + 1, 6) for d in distinct]
    assert "at most 6 ids per feature" in capsys.readouterr().out


def test_parse_keeps_line_numbers_with_stray_bytes_and_carriage_returns():
    from compactrec.data.convert.criteo_tsv import parse_block

    good = "\t".join(["1"] + ["2"] * 13 + ["0000000a"] * 26).encode()
    block = b"\n".join([
        good,
        b"1\t\xff\xfe" + b"\t2" * 12 + b"\t0000000a" * 26,  # not UTF-8, in a dense field
        good[:-8] + b"\xff\xfe\xfd\xfc0000",  # ... in a categorical field
        good + b"\r",  # a Windows line end: fine
        good[:30] + b"\r" + good[30:],  # a bare \r inside a line: one bad line, not two
        good,
    ])
    cols = parse_block(block)
    assert cols.lines == 6 and cols.rows == 3 and cols.row_lines.tolist() == [0, 3, 5]
    assert [(b.line, b.reason.split(" ")[0]) for b in cols.bad] == [(2, "int_0"), (3, "cat_25"), (5, "cat_0")]
