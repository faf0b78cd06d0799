# The README's two commands: `make demo` and `make test`. Both create the project-local
# .venv from requirements.lock when it is missing or older than the lock.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench lock clean

venv: $(STAMP)

# --no-deps over the full lock: the resolver never runs, so nothing can pull the CUDA
# builds of torch / fbgemm-gpu. --no-build-isolation: deepspeed's sdist builds against the
# torch in the lock (an isolated build would download a CUDA torch).
$(STAMP): requirements.lock setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip==26.3"
	$(PIP) install -q --no-deps --no-build-isolation -r requirements.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: venv
	$(VENV)/bin/compactrec sweep configs/demo.yaml

test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra tests

test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra tests -m "not distributed"

bench: venv
	OMP_NUM_THREADS=1 $(PY) benchmarks/reader.py

lock: venv
	( head -4 requirements.lock; $(PIP) freeze --all | grep -v -e "^-e" -e compactrec -e "^pip==" \
	  | sed 's/^torch==\(.*\)+cpu/torch==\1/' ) > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info
