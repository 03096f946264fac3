# All about Norm: `make book` builds the site, `make test` runs every check.
# Both create .venv on first use: `make book` installs what the site build needs, `make test` the rest.

# Python 3.11 or newer; where `python3` is older: `make PYTHON=python3.11 book`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# Two stages: .stamp-book once the site build's environment is installed (requirements-book.txt),
# .stamp-install once everything `make test` needs is (requirements.txt, which includes it).
BOOK_STAMP := $(VENV)/.stamp-book
STAMP  := $(VENV)/.stamp-install
# Where torch comes from. By default PyTorch's CPU index: the CPU wheel (torch 2.13.0+cpu,
# about 190 MB; every notebook runs on a CPU), not PyPI's Linux wheel, which is the CUDA build
# plus about 20 nvidia/triton wheels (about 2.7 GB). The GPU build, in a fresh .venv:
# `make install TORCH_INDEX=` takes torch from pip's usual index (PyPI: CUDA on Linux), or
# TORCH_INDEX=https://download.pytorch.org/whl/cuXXX (a CUDA version pytorch.org lists).
# If the index cannot be reached within 5 s (this project's CI machines reach only PyPI and
# keep the CPU wheel in a local --find-links directory), a torch wheel from pip's find-links is
# installed; without one the install stops and says what to set. Only torch comes from this
# index (--no-deps); its dependencies and everything else come from PyPI, pinned.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Exits 0 if the index answers within 5 s, else prints why (DNS, refused, TLS, timeout).
define TORCH_INDEX_PROBE
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=5).close()
except Exception as e:
    sys.exit(str(getattr(e, "reason", e)))
endef
export TORCH_INDEX_PROBE
TORCH_PIN   := $(shell sed -n 's/^\(torch==[^ ]*\).*/\1/p' requirements-book.txt)
TORCH_VERSION := $(patsubst torch==%,%,$(TORCH_PIN))
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
PORT   ?= 8000
# Two workers: the machine CI runs on has 2 cores.
XDIST  := -n 2

.PHONY: help install book test lint unit nbval nbval-native nbval-replication seed-sweep site-check \
	notebooks \
	serve lock clean

help:
	@echo "make book       build the site into _build/html"
	@echo "make test       lint, unit tests, nbval, notebook hygiene, site build and checks, browser check"
	@echo "make notebooks  re-execute every notebook in place (refresh the stored outputs)"
	@echo "make seed-sweep run the notebooks' asserts under other seed offsets (OFFSETS=...)"
	@echo "make serve      preview the built site on http://127.0.0.1:$(PORT)"

install: $(STAMP)

# The site build's environment: a venv, torch (TORCH_INDEX), requirements-book.txt, refimpl.
$(BOOK_STAMP): requirements-book.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "$(PYTHON) is not Python 3.11 or newer ($$($(PYTHON) --version 2>&1)); run e.g."; \
		echo "  make PYTHON=python3.11 $(or $(MAKECMDGOALS),install)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@if [ -z "$(TORCH_INDEX)" ]; then \
		echo "torch: from pip's configured index (TORCH_INDEX is empty)"; \
	elif $(PIP) show torch 2>/dev/null | grep -qE '^Version: $(TORCH_VERSION)(\+.*)?$$'; then \
		echo "torch: $(TORCH_PIN) is installed ($$($(PIP) show torch | sed -n 's/^Version: //p'))"; \
	elif why=$$($(BIN)/python -c "$$TORCH_INDEX_PROBE" "$(TORCH_INDEX)/torch/" 2>&1); then \
		echo "torch: $(TORCH_PIN) from $(TORCH_INDEX)"; \
		$(PIP) install --quiet --no-deps --index-url "$(TORCH_INDEX)" "$(TORCH_PIN)" || exit 1; \
	else \
		echo "torch: $(TORCH_INDEX) cannot be reached ($$why);"; \
		echo "  looking for a local torch wheel (pip's find-links)"; \
		$(PIP) install --quiet --no-deps --no-index "$(TORCH_PIN)" || { \
			echo "No torch wheel. Set TORCH_INDEX to a reachable mirror of $(TORCH_INDEX),"; \
			echo "or TORCH_INDEX= to take torch from PyPI (on Linux the CUDA build, about 2.7 GB)."; \
			exit 1; }; \
	fi
	$(PIP) install --quiet -r requirements-book.txt -c constraints.txt
	$(PIP) install --quiet --no-deps -e .
	$(PIP) check
	@$(PIP) show torch | sed -n 's/^Version: /torch installed: /p'
	touch $@

# Everything else `make test` needs.
$(STAMP): $(BOOK_STAMP) requirements.txt
	$(PIP) install --quiet -r requirements.txt -c constraints.txt
	$(PIP) check
	touch $@

# Needs only the site build's environment (make test installs the rest first).
book: $(BOOK_STAMP)
	rm -rf _build/html _build/.doctrees
	$(BIN)/jupyter-book build . -W -n --keep-going

lint: $(STAMP)
	$(BIN)/ruff check refimpl tests notebooks scripts
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

# Unit tests, notebook hygiene and the docstring examples of refimpl (doctests); the site
# tests need a built site and run after `book`.
unit: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -q --ignore=tests/site --doctest-modules refimpl tests

# nbval re-executes every notebook and compares it with its stored outputs, twice: on this
# CPU's native code path, and as a replication: on the portable code path (no AVX in ATen,
# MKL's conditional numerical reproducibility, oneDNN capped at SSE4.1, a stand-in for
# "another CPU") *and* with every experiment seed shifted (refimpl.seeds honours
# REFIMPL_SEED_OFFSET). Stored outputs must pass both: a compared cell may print only what
# depends neither on last-bit rounding nor on the seeds; verdicts must hold for new seeds.
# --dist loadfile keeps each notebook's cells on one worker (one kernel per notebook). The cell
# timeout guards against a hang, not a budget (each notebook runs in <= 60 s on 2 idle cores):
# generous, because a shared CI machine can be several times slower.
NBVAL := $(BIN)/python -m pytest $(XDIST) --dist loadfile -q -p no:cacheprovider --nbval \
	--nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=300
OTHER_CPU_PATH := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41
# CI's replication offset: one fixed set of seeds nobody tuned on (any other offset must
# pass too: `make seed-sweep OFFSETS="3 17 4242"` runs the notebooks' asserts under others).
REPLICATION_SEED_OFFSET := 1000
OFFSETS ?= 1 7 123

nbval: nbval-native nbval-replication

nbval-native: $(STAMP)
	REFIMPL_SEED_OFFSET=0 $(NBVAL) $(NOTEBOOKS)

nbval-replication: $(STAMP)
	$(OTHER_CPU_PATH) REFIMPL_SEED_OFFSET=$(REPLICATION_SEED_OFFSET) $(NBVAL) $(NOTEBOOKS)

# Not part of `make test`: executes the notebooks (NB=...) under each seed offset without
# comparing outputs, and reports every cell that raises (a verdict that did not replicate).
seed-sweep: $(STAMP)
	$(BIN)/python scripts/seed_sweep.py --offsets "$(OFFSETS)" $(NB)

site-check: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -q tests/site

test: lint unit nbval book site-check

# `make notebooks NB=notebooks/08_x.ipynb` re-executes only the notebooks named.
NB ?= $(NOTEBOOKS)
notebooks: $(STAMP)
	for nb in $(NB); do \
		echo "executing $$nb"; \
		REFIMPL_SEED_OFFSET=0 $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=120 --ExecutePreprocessor.kernel_name=python3 $$nb || exit 1; \
		$(BIN)/python tests/strip_execution_metadata.py $$nb || exit 1; \
	done

serve:
	@echo "serving _build/html on http://127.0.0.1:$(PORT) (Ctrl-C stops)"
	$(BIN)/python -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

# Refresh constraints.txt from the current venv after changing requirements.txt.
lock: $(STAMP)
	( echo "# Full lock of the environment that requirements.txt resolves to (pip freeze)."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^torch==' ; echo "torch==2.13.0" ) > constraints.txt

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis
