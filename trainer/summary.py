"""The short table a run (or a sweep) prints at the end."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence, Tuple

COLUMNS: List[Tuple[str, str, str]] = [  # (header, metrics key, format)
    ("run", "name", "{}"),
    ("method", "embedding_kind", "{}"),
    ("ratio asked", "ratio_requested", "{:g}x"),
    ("ratio built", "compression_ratio", "{:.1f}x"),
    ("workers", "world_size", "{}"),
    ("AUC", "auc", "{:.4f}"),
    ("best AUC", "best_auc", "{:.4f}"),
    ("best epoch", "best_epoch", "{}"),
    ("Bayes AUC", "bayes_auc", "{:.4f}"),
    ("logloss", "logloss", "{:.4f}"),
    ("NE", "ne", "{:.4f}"),
    ("nDCG@10", "ndcg@10", "{:.4f}"),
    ("samples/s", "samples_per_s", "{:,.0f}"),
    ("emb MB", "embedding_mb", "{:.2f}"),
]


def _cell(fmt: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


# The budget planners end their messages with the reachable maximum: "... give 22.7x at
# most", "at most 14.1x with dim 32", "the largest reachable compression ratio is 12.34x".
_MAX = re.compile(r"(\d+(?:\.\d+)?)x\b")
ERROR_WIDTH = 40  # the full text is in results.csv and the log; the table stays narrow


def _why(m: Dict[str, Any]) -> str:
    """One short cell for a point that did not run: ``unreachable (max 22.7x)`` or
    ``failed: <the start of the error>``."""
    if m.get("status") == "unreachable":
        found = _MAX.findall(str(m["error"]))
        return f"unreachable (max {found[-1]}x)" if found else "unreachable"
    text = " ".join(str(m["error"]).split())
    text = text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 3] + "..."
    return f"failed: {text}"


def summary_table(rows: Sequence[Dict[str, Any]], columns: Sequence[Tuple[str, str, str]] = COLUMNS) -> str:
    """A Markdown table, one row per run's metrics; a row with an ``error`` (a point whose
    ratio its method cannot reach, or a run that failed) shows a short reason after its
    first cells.
    Metric columns no row has (e.g. nDCG without ranking data) are left out."""
    columns = [c for i, c in enumerate(columns) if i < 3 or any(c[1] in m or c[1] == "embedding_mb" for m in rows)]
    body = []
    for m in rows:
        m = {**m, "embedding_mb": m["embedding_bytes"] / 2**20 if "embedding_bytes" in m else None}
        cells = [_cell(fmt, m.get(key)) for _, key, fmt in columns]
        if "error" in m:  # run, method and ratio asked, then why it did not run
            cells = cells[:3] + [_why(m)] + [""] * (len(columns) - 4)
        body.append(cells)
    headers = [h for h, _, _ in columns]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *[line(r) for r in body]])
