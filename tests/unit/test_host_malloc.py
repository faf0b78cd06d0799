"""keep_freed_memory: glibc stops handing megabyte tensors fresh (page-faulting) pages."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A step's pattern through the C library's malloc itself (what PyTorch's CPU allocator calls):
# three 8 MiB blocks alive at once, written, freed. Under glibc's defaults they come back as
# fresh pages every step (mmapped, or trimmed off the heap's top: a fault per 4 KiB on first
# touch); kept, only the first step faults. (Torch tensors go through posix_memalign, whose
# split-off alignment slack makes the steady state take a few steps longer; the mechanism is
# the same: benchmarks/host_malloc.py measures it on the training step.)
PATTERN = """
import ctypes, resource, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
if sys.argv[1] == "keep":
    from compactrec.trainer.host_malloc import keep_freed_memory
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(8):
    blocks = [libc.malloc(8 << 20) for _ in range(3)]
    for b in blocks:
        libc.memset(b, 1, 8 << 20)
    for b in blocks:
        libc.free(b)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", PATTERN, setting], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_faults_far_less_than_glibcs_defaults():
    default, keep = _faults("default"), _faults("keep")
    per_step = 3 * 8 * 256  # 4 KiB pages a step touches
    assert default > 5 * per_step, default  # the defaults fault most steps' pages anew
    assert keep < 2 * per_step, keep  # kept: the first step's pages only


def test_worker_main_calls_it_when_the_config_says_so(monkeypatch):
    import compactrec.trainer.entry as entry
    from compactrec.trainer.config import RunConfig, config_to_dict

    calls = []
    monkeypatch.setattr(entry, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(entry, "current_env", lambda device: (_ for _ in ()).throw(RuntimeError("stop here")))
    for keep, want in ((True, 1), (False, 1), (True, 2)):
        cfg = RunConfig()
        cfg.cluster.keep_freed_memory = keep
        with pytest.raises(RuntimeError, match="stop here"):
            entry.worker_main(config_to_dict(cfg))
        assert len(calls) == want, (keep, calls)
