# fedmpi — `make run` and `make test` work on a fresh machine: both install first.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
RANKS   ?= 3
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1

.PHONY: install run test test-unit test-mpi test-integration test-slurm test-gpu bench paper-cpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[mpich,test]'
	touch $(STAMP)

# The quick start: θ = 0.5 (the paper's "up to 50% smaller") and θ = 0.95, then a report.
run: install
	$(MPIEXEC) -n $(RANKS) $(PY) -m fedmpi run configs/quickstart.yaml --overwrite
	$(MPIEXEC) -n $(RANKS) $(PY) -m fedmpi run configs/quickstart.yaml --overwrite \
	  --set name=quickstart-theta95 \
	  --set compression.uplink.0.prune.rate=0.95 --set compression.downlink.0.prune.rate=0.95
	$(PY) -m fedmpi report results/quickstart.h5 results/quickstart-theta95.h5 \
	  --out results/quickstart-report

test: install
	$(MAKE) --no-print-directory test-unit test-mpi test-integration test-slurm

test-unit: install
	$(PY) -m pytest -q tests/unit

test-mpi: install
	$(MPIEXEC) -n 3 $(PY) -m pytest -q --with-mpi -p no:cacheprovider tests/mpi

test-integration: install
	$(PY) -m pytest -q tests/integration

test-slurm: install
	$(PY) -m pytest -q -rs tests/slurm

# GPU checks (skipped with a message without CUDA); jobs/gpu-check.sh runs them on a GPU.
test-gpu: install
	$(PY) -m pytest -q -rs tests/gpu

bench: install
	$(PY) -m fedmpi bench codec

# Reproduce the paper at CPU scale (about an hour on 2 cores): θ ∈ {0, 0.5, 0.7, 0.9} × E ∈ {1, 10}
# on CIFAR-10 images; finished tasks are skipped, interrupted ones resumed.
PAPER_SWEEP ?= configs/paper/sweep-cpu.yaml
paper-cpu: install
	n=$$($(PY) -m fedmpi sweep $(PAPER_SWEEP) --count) && \
	for i in $$(seq 0 $$((n - 1))); do \
	  $(PY) -m fedmpi sweep $(PAPER_SWEEP) --task $$i --launch "$(MPIEXEC) -n $(RANKS)" || exit $$?; \
	done
	$(PY) -m fedmpi report results/paper-cpu/*.h5 --out results/paper-cpu/report

clean:
	rm -rf $(VENV) .pytest_cache
