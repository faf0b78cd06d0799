"""Which sparse features a model gets: every one but the constant ones.

A feature whose cardinality is at most 1 (only id 0: an empty or constant column, e.g. a
Criteo column that is empty in every row) carries no information; its 1-row table would
still count against every compression budget and take a slot in the interaction. Such
features are dropped from the schema the readers and the model are built from, with one
line naming them.

Example::

    schema = trainable_schema(manifest.schema, say=print)   # "dropped constant features: cat_5"
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

from compactrec.data.reader.manifest import FeatureSchema


def trainable_schema(schema: FeatureSchema, say: Optional[Callable[[str], None]] = None) -> FeatureSchema:
    """``schema`` without its sparse features of cardinality <= 1 (``say`` reports them)."""
    dropped = [f.name for f in schema.sparse if f.cardinality <= 1]
    if not dropped:
        return schema
    kept = tuple(f for f in schema.sparse if f.cardinality > 1)
    if not kept:
        raise ValueError(f"every sparse feature is constant (cardinality <= 1: {dropped}): nothing to embed")
    if say is not None:
        say(f"compactrec: dropped constant features (one id in the whole data set, nothing to learn): {', '.join(dropped)}")
    return replace(schema, sparse=kept)
