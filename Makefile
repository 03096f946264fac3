# All about Norm: `make book` builds the site, `make test` runs every check.
# Both create .venv and install the pinned environment on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install
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

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

book: $(STAMP)
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
# --dist loadfile keeps each notebook's cells on one worker (one kernel per notebook).
NBVAL := $(BIN)/python -m pytest $(XDIST) --dist loadfile -q -p no:cacheprovider --nbval \
	--nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=120
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
