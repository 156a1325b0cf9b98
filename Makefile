# Two commands do everything on a fresh machine: `make report` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ASV := $(BIN)/asv
INSTALLED := $(VENV)/.installed

.PHONY: install test report experiments targets asv asv-quick asv-gpu bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: 2.13.0 is the CPU build; an unpinned torch pulls CUDA.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(INSTALLED)

# Triton kernels run on the CPU through its interpreter in tests.
test: install
	TRITON_INTERPRET=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q

# The main job: CPU asv grid, experiments, precision study -> reports/index.html.
report: install
	$(BIN)/dicebench run

# Every experiment at paper scale into the committed results folder (about 25 minutes).
experiments: install
	OMP_NUM_THREADS=1 $(BIN)/dicebench experiment all --scale paper --workers 2 --out results/experiments

# Issue-3 targets of the fused implementation against MONAI (time, peak memory, accuracy).
targets: install
	$(BIN)/python -m benchmarks.targets

# The CPU grid (bench_loss, bench_scaling) in this environment, stored in results/asv under the
# current commit, then the HTML in .asv/html. forkserver is safe for the CPU grid (no benchmark
# module touches CUDA at import) and saves a torch import per parameter combination.
asv: install
	$(ASV) machine --yes
	$(ASV) run --python=same --launch-method=forkserver --show-stderr --set-commit-hash $$(git rev-parse HEAD) -b '^bench_(loss|scaling)\.'
	$(ASV) publish

# Smoke (CI): the suite imports, and one quick pass over the loss grid (every implementation and
# peer, every dtype) runs; nothing is stored; exits non-zero when any benchmark fails.
asv-quick: install
	$(ASV) machine --yes
	$(ASV) check --python=same
	$(ASV) run --python=same --quick --dry-run --launch-method=forkserver --show-stderr -b '^bench_loss\.Grid\.time_forward_backward\('

# The CUDA grid, on a machine with a GPU and a CUDA build of torch (asv.conf.json's spawn).
asv-gpu: install
	$(ASV) machine --yes
	$(ASV) run --python=same --show-stderr --set-commit-hash $$(git rev-parse HEAD) -b '^bench_cuda\.'
	$(ASV) publish

# pytest-benchmark micro suite -> reports/bench.json (a second source for the report).
bench: install
	mkdir -p reports
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -m benchmark_suite -p no:xdist -q tests/test_benchmarks_micro.py --benchmark-json=reports/bench.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
