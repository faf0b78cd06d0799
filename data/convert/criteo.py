"""Facts about the Criteo click logs: column names and per-feature cardinalities.

``CRITEO_TB_40M``: distinct ids per categorical feature in Criteo-1TB (days 0-23) with the
40M-row cap of MLPerf DLRMv2 (the values TorchRec's DLRM example passes as
``--num_embeddings_per_feature``). ``CRITEO_TB_RAW``: the same counts before the cap.
``CRITEO_KAGGLE``: distinct ids per feature in the Kaggle Display Advertising Challenge
``train.txt`` (45,840,617 rows), as counted by the dlrm reference preprocessing.
"""

from __future__ import annotations

from typing import Dict, List

NUM_DENSE = 13
NUM_SPARSE = 26
LABEL = "label"
DENSE_NAMES: List[str] = [f"int_{i}" for i in range(NUM_DENSE)]
SPARSE_NAMES: List[str] = [f"cat_{i}" for i in range(NUM_SPARSE)]

CRITEO_TB_RAW: List[int] = [
    227605432, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 130229467, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 292775614, 40790948, 187188510, 590152, 12973, 108, 36,
]
MLPERF_MAX_IDS = 40_000_000
CRITEO_TB_40M: List[int] = [min(n, MLPERF_MAX_IDS) for n in CRITEO_TB_RAW]
CRITEO_KAGGLE: List[int] = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
    14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]

CARDINALITIES: Dict[str, List[int]] = {
    "criteo_tb_40m": CRITEO_TB_40M,
    "criteo_tb_raw": CRITEO_TB_RAW,
    "criteo_kaggle": CRITEO_KAGGLE,
}
