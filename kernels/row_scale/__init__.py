"""scale_pool: per-id scale (+ bias) of looked-up rows, then pool (MEmCom after a TorchRec lookup)."""
