"""project_sum: sum of K pooled blocks, each projected to the common width (or added as is)."""
