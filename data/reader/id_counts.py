"""Id frequencies from a sample of a split: the input of frequency-aware methods (MDE row
blocks). Every rank computes the same counts from the same leading rows of the same files,
so id -> block maps agree across ranks without a collective.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compactrec.data.reader.columns import DataError
from compactrec.data.reader.manifest import FeatureSchema


def count_ids(files: Sequence[str], schema: FeatureSchema, max_rows: int) -> Dict[str, np.ndarray]:
    """Per sparse feature, occurrences of each id in the first ``max_rows`` rows of ``files``
    (in order): (cardinality,) int64. Multi-hot bags count every id."""
    counts = {f.name: np.zeros(f.cardinality, dtype=np.int64) for f in schema.sparse}
    seen = 0
    for path in files:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=65536, columns=schema.sparse_names):
            take = min(batch.num_rows, max_rows - seen)
            batch = batch.slice(0, take)
            for f in schema.sparse:
                col = batch.column(f.name)
                if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                    col = col.flatten()
                ids = col.to_numpy(zero_copy_only=False)
                if ids.size and (ids.min() < 0 or ids.max() >= f.cardinality):  # before bincount, which fails or drops them
                    bad = ids[(ids < 0) | (ids >= f.cardinality)][0]
                    raise DataError(
                        f"{path}: column '{f.name}' holds id {bad} outside [0, {f.cardinality}) (cardinality from "
                        "the data manifest; found while counting ids for frequency-ranked blocks)"
                    )
                counts[f.name] += np.bincount(ids.astype(np.int64), minlength=f.cardinality)[: f.cardinality]
            seen += take
            if seen >= max_rows:
                return counts
    return counts
