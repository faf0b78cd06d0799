# The README's two commands: `make demo` and `make test`. Both create the project-local
# .venv from requirements.lock when it is missing or older than the lock.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench gpu-check compile-check lock lock-gpu check-gpu-lock clean

venv: $(STAMP)

# Build tools that a source build needs, from the lock, before anything else: pip prepares
# every requirement before it installs any, so deepspeed's sdist would otherwise be built
# against a new venv's setuptools 65.5, which has no bdist_wheel (docs/stack.md).
BUILD_TOOLS = $$(grep -E '^(pip|setuptools)==' requirements.lock)

# --no-deps over the full lock: the resolver never runs, so nothing can pull the CUDA
# builds of torch / fbgemm-gpu. --no-build-isolation: deepspeed's sdist builds against the
# torch in the lock (an isolated build would download a CUDA torch).
$(STAMP): requirements.lock setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "== install: build tools, then requirements.lock (--no-deps), then the project"
	$(PIP) install -q --no-deps $(BUILD_TOOLS)
	$(PIP) install -q --no-deps --no-build-isolation -r requirements.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchrec, fbgemm_gpu, ray, pyarrow, triton, deepspeed, compactrec.cli; print('== installed: torch', torch.__version__, 'torchrec', torchrec.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/compactrec sweep configs/demo.yaml

test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra --durations=15 tests

test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra tests -m "not distributed"

bench: venv
	OMP_NUM_THREADS=1 $(PY) benchmarks/reader.py

# Kernel parity + timings on a CUDA machine, from the raw tree: no venv, no install (that machine
# has its own torch/triton/numpy and no TorchRec); `make gpu-check PYTHON=python3` there. The
# report goes to $(OUT)/gpu_check.json when OUT is set (the GPU machine sets it), else ./.
GPU_CHECK_JSON ?= $(if $(OUT),$(OUT)/gpu_check.json,gpu_check.json)
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --out $(GPU_CHECK_JSON)

# Compile every kernel launch of the parity cases for sm_90 without a GPU (what the interpreter
# cannot check); TRITON_PATH=DIR compiles with another Triton, e.g. the GPU machine's 3.6.
compile-check: venv
	$(PY) benchmarks/triton_compile_check.py --out compile_check.json $(if $(TRITON_PATH),--triton-path $(TRITON_PATH))

lock: venv
	( head -4 requirements.lock; $(PIP) freeze --all | grep -v -e "^-e" -e compactrec \
	  | sed 's/^torch==\(.*\)+cpu/torch==\1/' ) > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock
	$(PY) cluster/gpu_lock.py write

# The CUDA lock (cluster/Dockerfile) from the CPU lock; the check resolves every pin for Linux
# x86-64 / Python 3.11 through the registry without installing (docs/stack.md).
lock-gpu: venv
	$(PY) cluster/gpu_lock.py write

check-gpu-lock: venv
	$(PY) cluster/gpu_lock.py check

clean:
	rm -rf $(VENV) build *.egg-info
