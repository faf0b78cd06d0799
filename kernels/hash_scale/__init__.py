"""hash_scale_bag: fused hash -> gather -> per-entity scale (+ bias) -> pool (MEmCom, hashing trick)."""
