"""hash_remap: the id transform in front of the hashed lookups (splitmix64 hash_mod, per-value moduli)."""
