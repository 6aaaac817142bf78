# Every target that runs code installs what it needs into $(VENV) first, so a fresh
# clone needs exactly `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTHON  ?= python3
# One intra-op thread per process: the machines are 2 shared cores, and torch with
# 2 OpenMP threads beside another busy process has been seen to slow down 50x.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
# pytest workers; each uses one thread.
WORKERS ?= 2

.PHONY: install test demo bench lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

# COMPRESS_NATIVE=require: the C decoder must build here, so CI tests the compiled path.
test: $(STAMP)
	COMPRESS_NATIVE=require $(PY) -m pytest -n $(WORKERS) --dist loadgroup $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/compress-train $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	mkdir -p bench && $(PY) -m compress.bench --out bench $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check compress tests tutorials

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
