"""qr_compose_pool: quotient and remainder rows (as TorchRec looked them up) composed per id, then pooled."""
