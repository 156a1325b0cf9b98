# Two commands do everything on a fresh machine: `make report` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ASV := $(BIN)/asv
INSTALLED := $(VENV)/.installed

.PHONY: install test report screenshot experiments targets asv asv-range asv-continuous asv-quick asv-curated asv-gpu \
	memory-gate gpu-compile gpu-check bench audit-peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first. pip's default torch==2.13.0 is the CUDA build on Linux
# (several GB) unless a CPU wheel is at hand, as on the development machine; for the CPU build
# elsewhere: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The editable install compiles fused's C++ kernels in place (setup.py) against that torch, so
# it builds without isolation (an isolated build would fetch a second torch).
TORCH_INDEX ?=
$(INSTALLED): pyproject.toml setup.py $(wildcard dice_impls/fused/*.cpp dice_impls/fused/*.h) | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q 'setuptools>=77' ninja
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[dev]'
	# nnU-Net's loss modules, for the conformance tests of dice_impls.compat.nnunet: --no-deps keeps
	# torch 2.13.0 (nnunetv2's requirements pull a newer torch and CUDA wheels through torchvision);
	# the loss modules import only torch and numpy, already installed.
	$(BIN)/python -m pip install -q --no-deps nnunetv2==2.8.1
	touch $@

install: $(INSTALLED)

# Triton kernels run on the CPU through its interpreter in tests. The micro benchmarks are skipped
# (--benchmark-skip in pyproject's addopts; make bench runs them). --dist loadgroup keeps the tests
# of one xdist_group (the main job's: one quick run for all of them) on one worker.
test: install
	TRITON_INTERPRET=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q

# The main job: CPU asv grid, experiments, precision study -> reports/index.html.
report: install
	$(BIN)/dicebench run

# docs/report.png, the README's picture of the page: the page built from the committed results,
# its first screen rendered by headless Chromium (Debian's package: apt-get install -y chromium).
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser)
screenshot: install
	$(BIN)/dicebench report --out reports/shipped
	$(if $(CHROMIUM),,$(error screenshot needs Chromium: apt-get install -y chromium))
	$(CHROMIUM) --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
	    --disable-component-update --disable-sync --hide-scrollbars --window-size=1280,900 \
	    --screenshot=$(CURDIR)/docs/report.png file://$(CURDIR)/reports/shipped/index.html 2>/dev/null
	@echo "docs/report.png: the first screen of reports/shipped/index.html"

# Every experiment at paper scale into the committed results folder (about 75 minutes on 2 cores).
experiments: install
	OMP_NUM_THREADS=1 $(BIN)/dicebench experiment all --scale paper --workers 2 --out results/experiments

# The fused implementation's targets against MONAI (time, peak memory, accuracy): results/fused/
targets: install
	$(BIN)/python -m benchmarks.targets

# asv (docs/benchmarks.md). Runs write under reports/ (git-ignored: results in reports/asv, HTML in
# reports/asv-html) and build their environments in .asv/env; the curated results in results/asv
# change only through `make asv-curated`. The machine name is stable and path-free (default
# <cpu vendor>-<cores>core, benchmarks/asv_machine.py); override with ASV_MACHINE=name.
# forkserver is safe for the CPU grid (no benchmark module touches CUDA at import) and saves a torch
# import per parameter combination.
ASV_MACHINE ?= $(shell $(BIN)/python -m benchmarks.asv_machine 2>/dev/null)
# The --bench selections are defined once, in benchmarks/selections.py (dicebench run reads them too).
selection = "$(shell $(BIN)/python -m benchmarks.selections $(1))"
ASV_RUN := $(ASV) run --machine $(ASV_MACHINE) --launch-method=forkserver --show-stderr

# The CPU grid at HEAD, in the virtualenv asv builds for it (the first run creates it: torch, the
# peers, the project's wheel; minutes), then asv's HTML.
asv: install
	$(BIN)/python -m benchmarks.asv_machine $(ASV_MACHINE)
	$(ASV_RUN) -b $(call selection,cpu) HEAD^!
	$(ASV) publish

# Any range of commits, each built and installed into asv's environment: make asv-range RANGE=HEAD~3..HEAD
RANGE ?= HEAD~3..HEAD
asv-range: install
	$(BIN)/python -m benchmarks.asv_machine $(ASV_MACHINE)
	$(ASV_RUN) -b $(call selection,cpu) $(RANGE)
	$(ASV) publish

# Timing regressions between two commits, on a quiet machine: both are built, benchmarked in
# interleaved rounds, and asv exits non-zero when HEAD is slower than BASE by more than FACTOR.
BASE ?= HEAD~1
FACTOR ?= 1.2
asv-continuous: install
	$(BIN)/python -m benchmarks.asv_machine $(ASV_MACHINE)
	$(ASV) continuous --machine $(ASV_MACHINE) --launch-method=forkserver --show-stderr --split \
	    --factor $(FACTOR) -b $(call selection,continuous) $(BASE) HEAD

# Smoke (CI): the suite imports, and one quick pass over the loss grid (every implementation and
# peer, every dtype) runs in this environment; nothing is stored; exits non-zero when any benchmark fails.
asv-quick: install
	$(BIN)/python -m benchmarks.asv_machine $(ASV_MACHINE)
	$(ASV) check --python=same
	$(ASV) run --python=same --machine $(ASV_MACHINE) --quick --dry-run --launch-method=forkserver --show-stderr -b $(call selection,smoke)

# Deterministic regression gate (CI): peak memory above the inputs of each implementation at two
# shapes, against budgets in logit sizes (benchmarks/memory_gate.py).
memory-gate: install
	OMP_NUM_THREADS=2 $(BIN)/python -m benchmarks.memory_gate

# The curated results: the CPU grid at HEAD as `make asv`, copied into results/asv (commit them).
# Run it on a quiet machine only; ASV_MACHINE names the hardware (e.g. cpu-2core-shared).
asv-curated: asv
	mkdir -p results/asv/$(ASV_MACHINE)
	cp reports/asv/benchmarks.json results/asv/
	cp reports/asv/$(ASV_MACHINE)/machine.json reports/asv/$(ASV_MACHINE)/$$(git rev-parse --short=8 HEAD)-*.json results/asv/$(ASV_MACHINE)/

# The CUDA grid, on a machine with a GPU and a CUDA build of torch (asv.conf.json's spawn), in this
# environment: asv's own environment would install the CPU build of torch.
asv-gpu: install
	$(BIN)/python -m benchmarks.asv_machine $(ASV_MACHINE)
	$(ASV) run --python=same --machine $(ASV_MACHINE) --show-stderr --set-commit-hash $$(git rev-parse HEAD) -b $(call selection,gpu)
	$(ASV) publish

# CI: every Triton kernel compiled for sm_80 and sm_90 (no GPU needed), registers and spills
# printed, launch limits checked (benchmarks/gpu_compile.py; --sweep layouts|full for more).
gpu-compile: install
	$(BIN)/python -m benchmarks.gpu_compile

# On a CUDA machine: fused vs reference on CUDA, kernel times, the CUDA grid and peak memory into
# results/gpu/ (benchmarks/gpu_check.py, at most ~8 minutes). Without CUDA: one line, exit 2.
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check

# What each installed peer's Dice computes (dice_impls.audit, no timing) -> results/audit/peers.json
# (commit it). Runs in seconds; between runs only max_abs_diff/max_grad_diff move, in their last
# digits (docs/audit.md).
audit-peers: install
	OMP_NUM_THREADS=1 $(BIN)/python -m analysis.peer_audits --out results/audit/peers.json

# pytest-benchmark micro suite -> reports/bench.json (a second source for the report).
bench: install
	mkdir -p reports
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest --benchmark-only -p no:xdist -q tests/test_benchmarks_micro.py --benchmark-json=reports/bench.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
