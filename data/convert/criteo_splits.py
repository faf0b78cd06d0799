"""Which split each input line goes to: the day-based splits the field uses for Criteo.

- ``criteo_tb`` (Criteo 1TB click logs ``day_0`` .. ``day_23``): days 0-22 -> ``train``;
  day 23: the first half of its lines -> ``val``, the second half -> ``test``.
- ``kaggle`` (the Display Advertising Challenge ``train.txt``, 7 days in time order): the
  first 6/7 of the lines -> ``train``, the last 1/7 -> ``test``. No ``val`` split is written:
  the challenge's own test file has no labels, and the field reports the last 1/7 as test;
  evaluate on it with ``data.eval_split=test`` (or hold out a validation set by converting a
  copy with ``--split none``).
- ``none``: every line -> ``train``.

Halves and sevenths count physical lines (a malformed line counts where it stands), so the
cut is known before conversion from a newline count of that one file.

Example::

    rule = split_rule("criteo_tb", "day_23")
    rule.cuts(178274637)      # [(0, 'val'), (89137318, 'test')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Sequence, Tuple

MODES = ("criteo_tb", "kaggle", "none")
_DAY = re.compile(r"^day_(\d+)$")


@dataclass(frozen=True)
class SplitRule:
    """Lines of one input -> splits: one split, or a cut that needs the line count."""

    splits: Tuple[str, ...]  # in line order
    kind: str  # "whole" | "halves" | "last_seventh"

    @property
    def needs_line_count(self) -> bool:
        return self.kind != "whole"

    def cuts(self, lines: int) -> List[Tuple[int, str]]:
        """``[(first line, split), ...]`` (0-based line indices, ascending)."""
        if self.kind == "whole":
            return [(0, self.splits[0])]
        second = lines // 2 if self.kind == "halves" else lines - lines // 7
        return [(0, self.splits[0]), (second, self.splits[1])]


def split_rule(mode: str, stem: str) -> SplitRule:
    if mode == "none":
        return SplitRule(("train",), "whole")
    if mode == "kaggle":
        return SplitRule(("train", "test"), "last_seventh")
    if mode == "criteo_tb":
        m = _DAY.match(stem)
        if not m or not 0 <= int(m.group(1)) <= 23:
            raise ValueError(f"{stem}: --split criteo_tb expects inputs named day_0 .. day_23 (plain or .gz)")
        return SplitRule(("val", "test"), "halves") if int(m.group(1)) == 23 else SplitRule(("train",), "whole")
    raise ValueError(f"unknown split mode {mode!r}; expected one of {list(MODES)}")


def check_inputs(mode: str, stems: Sequence[str]) -> None:
    if mode == "kaggle" and len(stems) != 1:
        raise ValueError(f"--split kaggle takes exactly one input (train.txt), got {len(stems)}")
    for stem in stems:
        split_rule(mode, stem)


def natural_key(stem: str) -> Tuple:
    """day_2 before day_10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem))
