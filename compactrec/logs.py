"""Keep a run's console readable: FBGEMM prints every TBE's arguments at INFO, torch and
TorchRec emit deprecation FutureWarnings on every step. Called by the CLI and workers."""

from __future__ import annotations

import logging
import os
import warnings

_NOISY = ("fbgemm_gpu", "torchrec", "torch.fx._symbolic_trace", "torch.distributed")


def quiet_third_party() -> None:
    if os.environ.get("COMPACTREC_VERBOSE"):
        return
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.WARNING)
    for module in ("torch", "torchrec", "fbgemm_gpu"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
