"""CompactRec: DLRM-scale recommendation training with compressed embedding tables.

Sub-packages: ``compactrec.trainer`` (config, data, model, loop), ``compactrec.embeddings``
(compression methods), ``compactrec.sharding`` (TorchRec distribution),
``compactrec.kernels`` (Triton ops + references), ``compactrec.cluster`` (Ray, KubeRay).
"""

__version__ = "0.1.0"
