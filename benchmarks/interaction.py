"""DLRM's dot interaction, forward + backward: ``DotInteraction`` against TorchRec's ``InteractionArch``.

    OMP_NUM_THREADS=1 python benchmarks/interaction.py [--batch-sizes 128 2048] [--rounds 11] [--features 26] [--dim 32]

The two modules side by side (``trainer/interaction.py``): dense (B, D) and sparse (B, F, D)
leaves, one forward and one backward with a fixed output gradient per iteration. Rounds
alternate the two (round 0 discarded); each round times enough iterations for ~0.2 s in
process CPU time. Printed per batch size: CPU ms per forward + backward (medians), the
speed-up (median [min, max] of the per-round ratios) and the load average at start and end.
On a GPU (``--device cuda``) times are CUDA-synchronised wall times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 2048])
    p.add_argument("--features", type=int, default=26)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    from torchrec.models.dlrm import InteractionArch

    from compactrec.trainer.interaction import DotInteraction

    torch.set_num_threads(1)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    f, d = args.features, args.dim
    load_start = os.getloadavg()[0]
    print(f"F = {f} sparse features + the dense vector, dim {d}, {args.rounds} rounds, {dev}")
    print("| batch | TorchRec's InteractionArch, ms | DotInteraction, ms | speed-up (median [min, max]) |")
    print("|---|---|---|---|")
    for b in args.batch_sizes:
        arches = {"torchrec": InteractionArch(f).to(dev), "ours": DotInteraction(f, device=dev)}
        gen = torch.Generator().manual_seed(b)
        dense = torch.randn(b, d, generator=gen).to(dev).requires_grad_()
        sparse = torch.randn(b, f, d, generator=gen).to(dev).requires_grad_()
        grad = torch.randn(b, d + f * (f + 1) // 2, generator=gen).to(dev)

        def step(arch) -> None:
            arch(dense, sparse).backward(grad)

        c = clock()
        step(arches["torchrec"])
        iters = max(3, int(0.2 / max(clock() - c, 1e-5)))
        times = {k: [] for k in arches}
        for r in range(args.rounds + 1):
            for k in (arches if r % 2 else reversed(list(arches))):  # alternate which goes first
                if cuda:
                    torch.cuda.synchronize()
                c = clock()
                for _ in range(iters):
                    step(arches[k])
                if cuda:
                    torch.cuda.synchronize()
                if r:
                    times[k].append((clock() - c) / iters * 1e3)
        ratio = [t / o for t, o in zip(times["torchrec"], times["ours"])]
        print(f"| {b} | {statistics.median(times['torchrec']):.3f} | {statistics.median(times['ours']):.3f} | "
              f"{statistics.median(ratio):.2f}x [{min(ratio):.2f}, {max(ratio):.2f}] |")
    print(f"load average {load_start:.1f} -> {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
