# aqueduct — `make help` lists the targets. CI (.ci/run) calls `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MATURIN := $(VENV)/bin/maturin
# A Python with upstream aqueduct==1.15.0, to compare against (`make upstream-venv`
# makes one in .venv-upstream; `make bench` uses it when it is there).
UPSTREAM_VENV ?= .venv-upstream
UPSTREAM_PYTHON ?= $(wildcard $(UPSTREAM_VENV)/bin/python)

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'maturin>=1.5,<2'

.PHONY: venv
venv: $(PY) ## Create the local virtualenv (.venv) with maturin

.PHONY: build
build: $(PY) ## Build the extension in release mode into .venv (with test/dev deps)
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH \
		$(MATURIN) develop --release --quiet --extras test,dev,docs --features fault-injection

.PHONY: test
test: build ## Build, then run cargo test (core) and pytest
	cargo test --workspace --all-features
	$(PY) -m pytest tests -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

.PHONY: docs
docs: build ## The documentation site (Sphinx; API reference from the sources and _core.pyi) into docs/_build/html, warnings as errors
	$(VENV)/bin/sphinx-build -q -E -W --keep-going -b html docs docs/_build/html

.PHONY: loom
loom: ## Model-check the ring protocol with loom (every interleaving of its tests)
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p aqueduct-core --release --all-features --test loom_ring

.PHONY: fuzz
fuzz: ## Fuzz every decoder of shared-memory and network bytes longer than CI does (PROPTEST_CASES, default 50,000 each)
	PROPTEST_CASES=$${PROPTEST_CASES:-50000} cargo test --workspace --release --all-features fuzz

.PHONY: demo
demo: build ## Serve a real model (digits, scikit-learn) and load it: accuracy, latency, throughput
	$(PY) examples/digits/demo.py

.PHONY: demo-sum
demo-sum: build ## The tutorial's first service (docs/tutorial.rst) under a short load
	$(PY) examples/demo.py

.PHONY: upstream-venv
upstream-venv: ## A venv with upstream aqueduct==1.15.0 (.venv-upstream) for make bench to compare against
	test -x $(UPSTREAM_VENV)/bin/python || $(PYTHON) -m venv $(UPSTREAM_VENV)
	$(UPSTREAM_VENV)/bin/python -m pip install -q 'aqueduct==1.15.0' numpy

.PHONY: bench
bench: build ## Web-shaped benchmarks vs upstream (when .venv-upstream or UPSTREAM_PYTHON is there), then 1 vs 2 Ray Serve replicas
	$(PY) benches/bench.py $(if $(UPSTREAM_PYTHON),--upstream $(UPSTREAM_PYTHON),)
	$(PY) benches/ray_bench.py

# PyTriton's Python backend stub needs an interpreter with its libpython
# (pyenv's 3.12 has one); LitServe goes in one of the same version
PEER_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python) python3.12)
PYTRITON_VENV ?= .venv-pytriton
LITSERVE_VENV ?= .venv-litserve
MOSEC_VENV ?= .venv-mosec

.PHONY: bench-http
bench-http: build ## HTTP benchmark vs mosec, Triton (PyTriton) and LitServe under wrk (installs what is missing)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	test -x $(MOSEC_VENV)/bin/python || ($(PYTHON) -m venv $(MOSEC_VENV) && $(MOSEC_VENV)/bin/pip install -q mosec)
	test -x $(PYTRITON_VENV)/bin/python || ($(PEER_PYTHON) -m venv $(PYTRITON_VENV) && $(PYTRITON_VENV)/bin/pip install -q nvidia-pytriton)
	test -x $(LITSERVE_VENV)/bin/python || ($(PEER_PYTHON) -m venv $(LITSERVE_VENV) && $(LITSERVE_VENV)/bin/pip install -q litserve)
	$(PY) benches/http/run.py --mosec-python $(MOSEC_VENV)/bin/python
	$(PY) benches/http/big_answer.py
	$(PY) benches/http/protocols.py --pytriton-python $(PYTRITON_VENV)/bin/python \
		--litserve-python $(LITSERVE_VENV)/bin/python

.PHONY: bench-publish
bench-publish: ## Copy bench-report/'s reports and plots into docs/ and rewrite the README's headline figures from them
	$(PY) benches/publish.py

BENTOML_VENV ?= .venv-bentoml

.PHONY: bench-slo
bench-slo: build ## Open-loop goodput at a 50 ms objective vs upstream, mosec, Triton (PyTriton), BentoML: table + bench-report/slo.png (installs what is missing)
	cargo build --release -p openloop
	$(PY) -c "import matplotlib" 2>/dev/null || $(VENV)/bin/pip install -q matplotlib
	test -x $(UPSTREAM_VENV)/bin/python || $(MAKE) upstream-venv
	$(UPSTREAM_VENV)/bin/python -c "import aiohttp" 2>/dev/null || $(UPSTREAM_VENV)/bin/pip install -q aiohttp
	test -x $(MOSEC_VENV)/bin/python || ($(PYTHON) -m venv $(MOSEC_VENV) && $(MOSEC_VENV)/bin/pip install -q mosec)
	test -x $(PYTRITON_VENV)/bin/python || ($(PEER_PYTHON) -m venv $(PYTRITON_VENV) && $(PYTRITON_VENV)/bin/pip install -q nvidia-pytriton)
	test -x $(BENTOML_VENV)/bin/bentoml || ($(PYTHON) -m venv $(BENTOML_VENV) && $(BENTOML_VENV)/bin/pip install -q bentoml)
	$(PY) benches/slo/sweep.py --upstream-python $(UPSTREAM_VENV)/bin/python \
		--mosec-python $(MOSEC_VENV)/bin/python --pytriton-python $(PYTRITON_VENV)/bin/python \
		--bentoml-python $(BENTOML_VENV)/bin/python

.PHONY: soak
soak: build ## 10 min of mixed load (SOAK_SECONDS) with a worker SIGKILLed every 30 s: RSS and fds per 100k requests of every process
	$(PY) benches/soak.py

.PHONY: lint
lint: build ## cargo fmt --check, clippy -D warnings, cargo doc -D warnings, ruff check + format --check, mypy --strict, stubtest (_core.pyi vs the module)
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p aqueduct-core -p aqueduct-http -p aqueduct-py
	$(VENV)/bin/ruff check python tests examples benches docs
	$(VENV)/bin/ruff format --check python tests examples benches docs
	$(VENV)/bin/mypy --strict python/aqueduct
	$(VENV)/bin/mypy --explicit-package-bases examples
	$(PY) -m mypy.stubtest aqueduct._core --allowlist crates/aqueduct-py/stubtest-allowlist.txt

.PHONY: fmt
fmt: $(PY) ## Format Rust and Python sources
	cargo fmt --all
	$(VENV)/bin/ruff format python tests examples benches docs

.PHONY: wheel
wheel: $(PY) ## Build a release abi3 wheel into dist/ (and check that PyPI renders its README)
	$(MATURIN) build --release --out dist
	$(PY) -m twine --version >/dev/null 2>&1 || $(PY) -m pip install -q 'twine>=5'
	$(PY) -m twine check --strict "$$(ls -t dist/aqueduct-*-abi3-*.whl | head -1)"

.PHONY: wheel-test
# Every CPython from 3.11 the machine has (on PATH, or installed by pyenv); override
# with WHEEL_PYTHONS="python3.11 /path/to/python3.13".
WHEEL_PYTHONS ?= python3.11 python3.12 python3.13 python3.14
wheel-test: wheel ## Install the abi3 wheel into a fresh venv per CPython >= 3.11 here and run the quick start in each
	@wheel="$$(ls -t dist/aqueduct-*-abi3-*.whl | head -1)"; tested=0; \
	for py in $(WHEEL_PYTHONS); do \
		exe="$$(command -v $$py)"; "$$exe" -c '' 2>/dev/null \
			|| exe="$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/*/bin/$$py 2>/dev/null | tail -1)"; \
		[ -n "$$exe" ] && "$$exe" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
			|| { echo "wheel-test: $$py not here, skipped"; continue; }; \
		venv=".venv-wheel-$$("$$exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
		echo "wheel-test: $$wheel on $$("$$exe" --version) in $$venv"; \
		rm -rf "$$venv" && "$$exe" -m venv "$$venv" \
			&& "$$venv/bin/python" -m pip install -q --upgrade pip \
			&& "$$venv/bin/python" -m pip install -q --force-reinstall "$$wheel[aiohttp]" \
			&& (cd /tmp && "$(CURDIR)/$$venv/bin/python" "$(abspath examples/wheel_smoke.py)") \
			|| exit 1; \
		tested=$$((tested + 1)); \
	done; \
	test $$tested -gt 0 || { echo "wheel-test: no CPython >= 3.11 found"; exit 1; }; \
	echo "wheel-test: passed on $$tested interpreter(s)"

.PHONY: clean
clean: ## Remove build outputs and the virtualenv
	cargo clean
	rm -rf $(VENV) dist .venv-wheel-*
