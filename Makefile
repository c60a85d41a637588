# cutq: the two commands a newcomer needs are `make quantize` and `make test` (`make demo` cuts out two bundled photos).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per set of extras, so `make setup EXTRAS=dev,ray` installs the extra into an existing .venv.
STAMP = $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma := ,
# Optional extras beside the dev tools; CI adds `train` (torch, CPU build) and `ray` so the fine-tune and Ray
# engine tests run too (without them those tests are skipped).
EXTRAS ?= dev

# Calibration photos for `make quantize`: davis-val beside the repo when present (split by scene into
# calibration and verification), else the bundled calibration_data/.
DAVIS := ../shared/data/davis-val
CALIB ?= $(if $(wildcard $(DAVIS)/images),$(DAVIS),calibration_data)

.PHONY: setup quantize demo test lint bench bench-suites bench-baseline bench-e2e clean cli-docs

setup: $(STAMP)  ## create .venv with cutq, cutq-runtime (editable) and the dev tools

$(STAMP): pyproject.toml runtime/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e "./runtime[serve]" -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Each model's own fidelity target (mask SSIM min vs FP32 on held-out photos): u2netp, the small model, 0.97.
quantize: setup  ## pull u2netp and u2net, quantize both to INT8 into the model cache, print the tables
	$(BIN)/cutq quantize --model u2netp --target-ssim 0.97 --calib-dir $(CALIB)
	$(BIN)/cutq quantize --model u2net --target-ssim 0.98 --tensor-headroom 2 --calib-dir $(CALIB)

demo: setup  ## cut the background out of a bundled photo into demo/
	$(BIN)/cutq remove calibration_data/chelsea.png calibration_data/astronaut.png --out-dir demo --model u2netp
	@echo "Cut-outs written to demo/"

test: setup  ## run the test suite (pulls u2netp and u2net into the model cache on first run)
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

cli-docs: setup  ## regenerate docs/cli.md from the commands' --help (tests/test_cli_docs.py checks it is current)
	$(BIN)/python tools/cli_docs.py

# The regression check (docs/benchmarks.md#regression-check): the hot-path suites fail when a benchmark's median is
# more than BENCH_TOLERANCE slower than in the latest baseline recorded on this CPU. Baselines are pytest-benchmark's
# saved runs, one folder per CPU: benchmarks/baselines/<CPU>/<OS-Python-bits>/NNNN_<commit>_<date>.json.
BENCH_TOLERANCE ?= median:25%
BENCH_BASELINES := benchmarks/baselines
BENCH_SUITES := $(BIN)/python -m pytest benchmarks/suites
BENCH_STORE := $(BIN)/python -m cutq.benchmarks.machine --baseline-dir $(BENCH_BASELINES)

# The suites, compared with this CPU's latest baseline when there is one (exit 3 from the helper: there is none).
define bench_suites
@store=$$($(BENCH_STORE)); found=$$?; \
	if [ $$found -eq 0 ]; then \
		echo "Regression check: against the latest run in $$store, failing beyond $(BENCH_TOLERANCE)"; \
		$(BENCH_SUITES) --benchmark-storage=$$store --benchmark-compare --benchmark-compare-fail=$(BENCH_TOLERANCE); \
	elif [ $$found -eq 3 ]; then \
		echo "No baseline for this CPU ($$store): the suites run without a regression check."; \
		echo "Record one on a quiet machine from a clean tree: make bench-baseline"; \
		$(BENCH_SUITES); \
	else exit $$found; fi
endef

bench: setup  ## every variant in one run (tables + bench-results/), then the hot-path suites vs this CPU's baseline
	$(BIN)/cutq bench --all --json bench-results/bench.json --markdown bench-results/bench.md --html bench-results/bench.html
	$(bench_suites)

bench-suites: setup  ## the hot-path suites alone; fail on a median BENCH_TOLERANCE slower than this CPU's baseline
	$(bench_suites)

bench-baseline: setup  ## record this CPU's baseline of the hot-path suites (refused on a dirty tree: BENCH_ALLOW_DIRTY=1)
	@if [ -n "$$(git status --porcelain)" ]; then \
		echo "The tree has uncommitted changes (git status --porcelain): a baseline should time committed code."; \
		if [ -z "$(BENCH_ALLOW_DIRTY)" ]; then echo "Commit or stash them, or record anyway: make bench-baseline BENCH_ALLOW_DIRTY=1"; exit 1; fi; \
		echo "BENCH_ALLOW_DIRTY is set: recording anyway; the file name ends in _uncommitted-changes."; \
	fi
	@echo "Load now (keep it under 0.5 while recording):$$(uptime | sed 's/.*load average//')"
	@store=$$($(BENCH_STORE)); found=$$?; [ $$found -eq 0 ] || [ $$found -eq 3 ] || exit $$found; \
	$(BENCH_SUITES) --benchmark-storage=$$store --benchmark-autosave && echo "Baseline saved under $$store/"

bench-e2e: setup  ## cutq vs rembg end to end, with the stage breakdown
	$(BIN)/python -m cutq.benchmarks.e2e

clean:
	rm -rf $(VENV) demo bench-results .pytest_cache .benchmarks

# Cross-CPU check: the runtime's masks under qemu (x86 AVX2 without VNNI, x86 SSE4.2, Cortex-A72, Cortex-A76)
# against this host, plus INT8 saturation controls. Downloads are cached in .cache/portability/. docs/portability.md
MODELS ?=
CPUS ?=
.PHONY: portability
portability: setup  ## masks on emulated CPUs vs this host (MODELS="u2netp u2netp-int8", CPUS="arm64-a72 ..."); exit 3: no registry
	$(BIN)/python tools/portability/check.py $(if $(MODELS),--models "$(MODELS)") $(if $(CPUS),--cpus $(CPUS))

# The bounded part CI runs: u2netp-int8 built here, then its masks and the controls on every emulated CPU
# (3 photos; about 5 minutes on 2 cores). FP32 and u2net-size models take 10x longer under emulation.
.PHONY: portability-ci
portability-ci: setup  ## CI's cross-CPU check: build u2netp-int8, compare it on every emulated CPU
	$(BIN)/cutq quantize --model u2netp --target-ssim 0.97 --calib-dir $(CALIB)
	$(BIN)/python tools/portability/check.py --models u2netp-int8

# `cutq serve` and its measurements (docs/serve.md). SERVE_MODELS: every INT8 variant in the model cache, else u2netp;
# the first is the default. SERVE_ARGS adds server options, e.g. SERVE_ARGS="--port 8080 --max-queue 32".
CUTQ_CACHE ?= $(or $(CUTQ_HOME),$(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME)/cutq),$(HOME)/.cache/cutq)
SERVE_MODELS ?= $(or $(foreach m,u2netp-int8 u2net-int8 u2net-p50-fast-int8,$(if $(wildcard $(CUTQ_CACHE)/$(m).onnx),$(m))),u2netp)
SERVE_ARGS ?=
LOAD_MODEL ?= $(if $(filter u2net-int8,$(SERVE_MODELS)),u2net-int8,$(firstword $(SERVE_MODELS)))
.PHONY: serve serve-soak bench-serve
serve: setup  ## serve the cached INT8 variants (else u2netp) on http://127.0.0.1:7000 until Ctrl-C
	$(BIN)/cutq serve $(addprefix --model ,$(SERVE_MODELS)) $(SERVE_ARGS)

# About 5 + 2 minutes on 2 cores: 2,000 cut-outs watching RSS and sessions, then a 64-client burst and SIGTERM.
serve-soak: setup  ## soak (2,000 requests: RSS growth, sessions, 5xx) and load (burst -> fast 503s, SIGTERM drains)
	$(BIN)/python tools/serve/soak.py $(addprefix --model ,$(SERVE_MODELS)) --json bench-results/serve-soak.json
	$(BIN)/python tools/serve/load.py --model $(LOAD_MODEL) --json bench-results/serve-load.json

# About 8 minutes on 2 cores; rembg[cpu,cli] goes into its own venv in .cache/serve-bench/ on first use.
bench-serve: setup  ## cutq serve vs rembg s, same photos and run: throughput, p50/p95, peak RSS, idle CPU
	$(BIN)/python tools/serve/bench_rembg.py --json bench-results/serve-bench.json --markdown bench-results/serve-bench.md

# The Ray engine (docs/ray.md): its tests on a local two-node Ray cluster, and local vs Ray throughput.
.PHONY: test-ray bench-ray
test-ray: setup  ## the Ray engine's tests on a local two-node Ray cluster (make test-ray EXTRAS=dev,ray)
	$(BIN)/python -m pytest -m ray tests/test_ray_engine.py

bench-ray: setup  ## images/s of the local engine and of Ray on 100 davis-val photos
	$(BIN)/python tools/ray_bench.py
