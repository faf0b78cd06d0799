"""The layout the README describes: the data pipeline is its own package, and the project cites
only documents that are in the repository."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# a cited document: anything under docs/, or an upper-case name such as README.md
# (lower-case names elsewhere, such as results.md, are files that runs write)
MD_REF = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*(?:[A-Z][A-Z0-9_-]*\.md)|docs/(?:[\w.-]+/)*[\w.-]+\.md)\b")


def _tracked() -> list:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / p for p in out.stdout.split()]


def test_data_pipeline_is_compactrec_data():
    for name in ("reader.parquet", "reader.manifest", "reader.batch", "reader.columns", "reader.prefetch",
                 "convert.criteo_convert", "convert.cli", "datasets.synthetic", "datasets.movielens",
                 "datasets.flights"):
        importlib.import_module(f"compactrec.data.{name}")
    assert not (REPO / "trainer" / "data").exists()


def test_no_code_imports_the_old_data_path():
    hits = [str(p.relative_to(REPO)) for p in _tracked() if p.suffix in (".py", ".md", ".yaml")
            and p.exists() and re.search(r"trainer[./]data\b", p.read_text(errors="replace"))]
    assert hits == []


def test_every_cited_document_is_in_the_repository():
    missing = []
    for path in _tracked():
        if path.suffix not in (".py", ".md", ".yaml", ".toml", ".cfg") and path.name not in ("Makefile", "Dockerfile"):
            continue
        if not path.exists():
            continue
        for ref in MD_REF.findall(path.read_text(errors="replace")):
            if not ((REPO / ref).exists() or (path.parent / ref).exists()):
                missing.append(f"{path.relative_to(REPO)}: {ref}")
    assert missing == [], missing
