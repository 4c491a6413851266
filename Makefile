# fedmpi — `make run` and `make test` work on a fresh machine: both install first.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
RANKS   ?= 3
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1

# Which MPI the MPI and integration tests run under (README "Tests"): the launcher command
# and the ranks' Python; by default this venv's (the mpich wheel's mpiexec).
TEST_MPIEXEC = $(or $(FEDMPI_MPIEXEC),$(MPIEXEC))
TEST_PY      = $(or $(FEDMPI_PYTHON),$(PY))

# Open MPI (Debian's openmpi-bin + libopenmpi-dev): a second venv that holds only mpi4py
# built against it and reaches everything else in $(VENV) (torch, h5py, fedmpi) through
# a .pth file that calls site.addsitedir, so that $(VENV)'s own .pth files (the editable
# fedmpi) are processed too. `make test` includes it when Open MPI is installed or CI=true.
OPENMPI_VENV    ?= .venv-ompi
OPENMPI_PY      := $(OPENMPI_VENV)/bin/python
OPENMPI_STAMP   := $(OPENMPI_VENV)/.installed
OPENMPI_MPICC   ?= mpicc.openmpi
OPENMPI_MPIEXEC ?= mpirun.openmpi --oversubscribe
HAVE_OPENMPI    := $(shell command -v $(OPENMPI_MPICC) 2>/dev/null)
# Open MPI refuses root unless told (CI and containers run as root)
OPENMPI_ENV     := $(if $(filter 0,$(shell id -u)),OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)

.PHONY: install install-openmpi run test test-unit test-mpi test-integration test-slurm \
	test-openmpi test-gpu bench paper-cpu paper-studies zoo list clean

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

# With Open MPI, its mpi4py compiles on the second core while the unit tests use the first.
WITH_OPENMPI = $(or $(HAVE_OPENMPI),$(filter true,$(CI)))
test: install
	$(MAKE) --no-print-directory $(if $(WITH_OPENMPI),-j2 --output-sync=target) test-unit \
	  $(if $(WITH_OPENMPI),install-openmpi)
	$(MAKE) --no-print-directory test-mpi test-integration test-slurm \
	  $(if $(WITH_OPENMPI),test-openmpi)

test-unit: install
	$(PY) -m pytest -q tests/unit

test-mpi: install
	$(TEST_MPIEXEC) -n 3 $(TEST_PY) -m pytest -q --with-mpi -p no:cacheprovider tests/mpi

# Each integration test runs whole MPI jobs that wait much of the time (liveness bounds,
# signals, deadlines): TEST_JOBS pytest workers (pytest-xdist) share the cores; 1 runs them
# one at a time.
TEST_JOBS ?= 2
test-integration: install
	$(TEST_PY) -m pytest -q -n $(TEST_JOBS) $(INTEGRATION_SELECT) tests/integration

# The MPI and integration tests again, under Open MPI: every test whose outcome can depend
# on the MPI library (launch, signals, liveness, failures, resume, accounting, ordering);
# those marked any_mpi (codecs, methods, reports through a run) run in the mpich leg only.
test-openmpi: install-openmpi
	env $(OPENMPI_ENV) $(MAKE) --no-print-directory test-mpi test-integration \
	  FEDMPI_MPIEXEC="$(OPENMPI_MPIEXEC)" FEDMPI_PYTHON=$(OPENMPI_PY) \
	  INTEGRATION_SELECT='-m "not any_mpi"'

install-openmpi: $(OPENMPI_STAMP)

# mpi4py at $(VENV)'s version, compiled with $(OPENMPI_MPICC) (2.5 min of CPU; pip caches the
# wheel). A cached wheel built against another MPI is caught and rebuilt without the cache.
$(OPENMPI_STAMP): $(STAMP)
	@command -v $(OPENMPI_MPICC) >/dev/null || { echo "no $(OPENMPI_MPICC): install Open MPI" \
	  "(Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev)"; exit 1; }
	test -x $(OPENMPI_PY) || $(PY) -m venv $(OPENMPI_VENV)
	$(PY) -c 'import sysconfig; print("import site; site.addsitedir(%r)" % sysconfig.get_path("purelib"))' \
	  > "$$($(OPENMPI_PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/fedmpi-venv.pth"
	v=$$($(PY) -c 'import mpi4py; print(mpi4py.__version__)') && \
	MPICC=$(OPENMPI_MPICC) $(OPENMPI_PY) -m pip install -q --no-binary mpi4py "mpi4py==$$v" && \
	{ $(OPENMPI_CHECK_RUN) >/dev/null 2>&1 || MPICC=$(OPENMPI_MPICC) $(OPENMPI_PY) -m pip install -q \
	  --no-cache-dir --force-reinstall --no-deps --no-binary mpi4py "mpi4py==$$v"; }
	$(OPENMPI_CHECK_RUN)
	touch $@

# Run from / so that fedmpi comes through the .pth files, not from the current directory.
OPENMPI_CHECK_RUN = (cd / && $(abspath $(OPENMPI_PY)) -c "$$OPENMPI_CHECK")

define OPENMPI_CHECK
import fedmpi, h5py, mpi4py, torch
from mpi4py import MPI
v = MPI.Get_library_version().replace("\0", "").strip().splitlines()[0]
assert v.startswith("Open MPI"), f"mpi4py in $(OPENMPI_VENV) is built against {v!r}, not Open MPI"
print(f"$(OPENMPI_VENV): mpi4py {mpi4py.__version__} on {v}; torch {torch.__version__}")
endef
export OPENMPI_CHECK

# Needs a running Slurm (as root: bash .ci/slurm-up.sh starts two nodes, n1 and n2; with
# FEDMPI_SLURM_NODES=1 one); tests/slurm/test_multinode.py skips with a message on one node.
test-slurm: install
	$(PY) -m pytest -q -rs tests/slurm

# GPU checks (skipped with a message without CUDA); jobs/gpu-check.sh runs them on a GPU.
test-gpu: install
	$(PY) -m pytest -q -rs tests/gpu

bench: install
	$(PY) -m fedmpi bench codec
	$(MPIEXEC) -n 2 $(PY) -m fedmpi bench transport
	$(PY) -m fedmpi bench round --config configs/quickstart.yaml --set rounds=4

# Reproduce the paper at CPU scale with ResNet-12: θ ∈ {0, 0.5, 0.7, 0.9, 0.95} × E = 1 ×
# seeds 0-2 (15 runs), then E = 10, seed 0 (5 runs); finished tasks are skipped,
# interrupted ones resumed. DURATION on 2 cores: about 1 hour. Measured on this idle
# 2-core VM: E = 1 runs 56-80 s each (15 runs ~20 min); E = 10 runs 7.5 min each (22 s a
# round, 2026-11-27; 5 runs ~38 min). PAPER_SWEEPS=configs/paper/sweep-cpu.yaml: E = 1 only.
PAPER_SWEEPS ?= configs/paper/sweep-cpu.yaml configs/paper/sweep-cpu-e10.yaml
paper-cpu: install
	@echo "paper-cpu: 20 runs, about 1 hour on 2 cores (measured: E = 1 ~1 min a run, E = 10 ~7.5 min)"
	for sw in $(PAPER_SWEEPS); do \
	  n=$$($(PY) -m fedmpi sweep $$sw --count) || exit $$?; \
	  for i in $$(seq 0 $$((n - 1))); do \
	    $(PY) -m fedmpi sweep $$sw --task $$i --launch "$(MPIEXEC) -n $(RANKS)" || exit $$?; \
	  done; \
	done
	$(PY) -m fedmpi report results/paper-cpu/*.h5 --out results/paper-cpu/report

# The paper's open questions at CPU scale (ResNet-12, seed 0 unless said): non-IID (12 runs),
# pruning x quantization (40 runs), client-specific θ vs uniform θ of the same bytes
# (jobs/paper-rate.sh, 12 runs over 3 seeds); then a report per study. DURATION on this
# idle 2-core VM: 55-75 s a run, 64 runs, about 70 minutes. Finished runs are skipped.
PAPER_STUDIES ?= configs/paper/sweep-noniid.yaml configs/paper/sweep-quant.yaml
paper-studies: install
	for sw in $(PAPER_STUDIES); do \
	  n=$$($(PY) -m fedmpi sweep $$sw --count) || exit $$?; \
	  for i in $$(seq 0 $$((n - 1))); do \
	    $(PY) -m fedmpi sweep $$sw --task $$i --launch "$(MPIEXEC) -n $(RANKS)" || exit $$?; \
	  done; \
	  dir=$$(dirname "$$($(PY) -m fedmpi sweep $$sw --task 0 --path)"); \
	  $(PY) -m fedmpi report "$$dir"/*.h5 --out "$$dir/report" || exit $$?; \
	done
	PY=$(PY) MPIEXEC=$(MPIEXEC) RANKS=$(RANKS) jobs/paper-rate.sh

# The compressor zoo (configs/zoo/sweep.yaml: 22 method configs x 3 seeds = 66 runs on
# CPU-scale CIFAR-10 with ResNet-12), task after task, then the report and the zoo table.
# DURATION on this idle 2-core VM: 57-75 s a run, about 80 minutes in all. Finished
# tasks are skipped, interrupted ones resumed. ZOO_SWEEP=configs/zoo/quick.yaml is the
# CI-sized one; its table goes to its own report folder, not to results/zoo-table.csv.
ZOO_SWEEP ?= configs/zoo/sweep.yaml
ZOO_TABLE ?= $(if $(filter configs/zoo/sweep.yaml,$(ZOO_SWEEP)),results/zoo-table.csv)
zoo: install
	n=$$($(PY) -m fedmpi sweep $(ZOO_SWEEP) --count) && \
	for i in $$(seq 0 $$((n - 1))); do \
	  $(PY) -m fedmpi sweep $(ZOO_SWEEP) --task $$i --launch "$(MPIEXEC) -n $(RANKS)" || exit $$?; \
	done && \
	dir=$$(dirname "$$($(PY) -m fedmpi sweep $(ZOO_SWEEP) --task 0 --path)") && \
	$(PY) -m fedmpi report "$$dir"/*.h5 --out "$$dir/report" \
	  $(if $(ZOO_TABLE),--zoo-table $(ZOO_TABLE)) && \
	cat "$$dir/report/ranking.md"

# What can be named in a config: compressors, stages, strategies, datasets, models.
list: install
	$(PY) -m fedmpi list

clean:
	rm -rf $(VENV) $(OPENMPI_VENV) .pytest_cache
