"""mixed_dim_bag: per-block pooled lookups projected to the common width (mixed-dimension embeddings)."""
