"""ROBE: hash (feature, id, chunk) -> array row, gather the chunks, pool (reference, cpu, triton)."""
