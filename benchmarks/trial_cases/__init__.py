"""The cases of the trial (``benchmarks/trial.py``), one module per group, registered in
``trial_harness.CASES`` as (name, group, fn, slow) when imported. Each ``fn(ctx)`` returns
``(outcome, detail)``.

Groups: config (knobs and their sources), data (bad values in shards and manifests),
checkpoint (planted and damaged files), resume (other settings), convert (converter inputs
and signals), fault (killed workers).
"""

# Imported for their registrations, in the order the trial runs them.
from trial_cases import config  # noqa: F401,I001
from trial_cases import data  # noqa: F401
from trial_cases import checkpoint  # noqa: F401
from trial_cases import resume  # noqa: F401
from trial_cases import convert  # noqa: F401
from trial_cases import fault  # noqa: F401
from trial_harness import CASES

__all__ = ["CASES"]
