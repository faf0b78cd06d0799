"""The command line answers at once: building the parser (``--help``, usage errors) imports
no torch, TorchRec, Ray or pyarrow, and the help is plain text, not RST docstrings. (Its
latency is a figure of benchmarks/cli_latency.py, not a timed test.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchrec", "fbgemm_gpu", "ray", "pyarrow", "numpy", "pandas", "matplotlib")
COMMANDS = [[], ["train"], ["sweep"], ["submit"], ["plan"], ["convert"], ["convert", "criteo"],
            ["convert", "criteo-count"], ["data"], ["data", "movielens"], ["data", "flights"], ["data", "inspect"], ["synth"]]
# Runs the CLI's parser in a fresh interpreter and prints, at exit, which heavy packages it loaded.
PROBE = (
    "import atexit, sys; atexit.register(lambda: print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1].split(','))), file=sys.stderr)); "
    "from compactrec.cli import main; sys.exit(main(sys.argv[2:]))"
)


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY), *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sweep", "--help"], ["no-such-command"], ["train"]],
                         ids=lambda a: " ".join(a))
def test_help_and_usage_errors_import_nothing_heavy(argv):
    r = _run(*argv)
    assert r.returncode in (0, 2), r.stderr
    assert "LOADED []" in r.stderr, r.stderr[-2000:]
    assert "usage: compactrec" in r.stdout + r.stderr


def test_help_is_plain_text():
    from compactrec.cli import build_parser

    for argv in COMMANDS:
        parser = build_parser()
        for part in argv:  # walk down to the sub-command's own parser
            action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
            parser = action.choices[part]
        text = parser.format_help()
        assert "``" not in text and "::" not in text, f"compactrec {' '.join(argv)} --help:\n{text}"
