#!/usr/bin/env bash
# One-GPU check in under 8 minutes, on a bare machine with no network:
#   1. installs the carried wheels (.gpu-wheels/: zstandard, mpich, mpi4py, pytest-mpi)
#      into a throwaway venv that also sees the machine's python packages (torch, numba, ...);
#   2. detects whether mpi4py finds an MPI library and whether mpiexec runs 2 ranks;
#   3. runs the GPU tests (tests/gpu, marker `gpu`);
#   4. runs server + 2 client ranks sharing the GPU: ResNet-12 on CIFAR-10 images,
#      a few rounds, the paper's pruning on both links, the codec on the device;
#      (without a working MPI: `fedmpi bench train` in 2 processes sharing the GPU);
#   5. `fedmpi bench codec --device cuda` (and the CPU fused-codec rows, same machine);
#   6. prints ONE table: card, images/s per client rank, encode/decode GB/s on the
#      device vs a device-to-device copy, time split per round.
# Every step has a timeout and the whole script a budget (BUDGET_S, default 450 s).
#
#   jobs/gpu-check.sh                       # from anywhere; writes $OUT or results/gpu-check
#   PY=/opt/torch/.venv/bin/python3 FEDMPI_CIFAR10=.gpu-data/cifar10-jpeg.tar.xz jobs/gpu-check.sh
#
# Environment: PY (python with torch; default python3), WHEELS (default .gpu-wheels),
# FEDMPI_CIFAR10 (CIFAR-10 archive; default .gpu-data/cifar10-jpeg.tar.xz, else a
# synthetic CIFAR-shaped set with a loud note), OUT (where the table, logs and files go),
# ROUNDS (default 4), BUDGET_S, GPU_CHECK_CPU=1 (dry run without a GPU: GPU steps skip).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-python3}
WHEELS=${WHEELS:-.gpu-wheels}
ROUNDS=${ROUNDS:-4}
BUDGET_S=${BUDGET_S:-450}
OUT=${OUT:-results/gpu-check}
WORK=${WORK:-/tmp/fedmpi-gpu-check}
rm -rf "$WORK/res"
mkdir -p "$OUT" "$WORK/res"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu-check.log  # written as it goes: kept even if the machine's limit cuts us off
: > "$LOG"
RES=$WORK/res  # step outputs; bundled into $OUT/gpu-check-files.tar.gz at the end
STATUS=$RES/steps.tsv
: > "$STATUS"
START=$(date +%s)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 FEDMPI_PROGRESS=0
export FEDMPI_CACHE=$WORK/cache NUMBA_CACHE_DIR=$WORK/numba MPLBACKEND=Agg

say() { echo "gpu-check: $*" | tee -a "$LOG" >&2; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
# step NAME MAX_S CMD...: run with a timeout of min(MAX_S, what the budget has left - 20 s)
step() {
  local name=$1 max=$2; shift 2
  local t; t=$(( $(left) - 20 )); [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -lt 10 ]; then say "$name: skipped (budget spent)"; printf '%s\tskipped\tbudget\n' "$name" >> "$STATUS"; return 124; fi
  say "$name (timeout ${t}s): $*"
  local t0; t0=$(date +%s)
  timeout -k 5 "$t" "$@" >> "$LOG" 2>&1
  local rc=$?
  say "$name: exit $rc after $(( $(date +%s) - t0 )) s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$STATUS"
  return $rc
}

# ------------------------------------------------------------------ 1. environment
# Carried wheels go to PREFIX with `pip install --prefix`, so that mpich's libmpi lands in
# PREFIX/lib (where mpi4py looks; MPI4PY_LIBMPI says it too) and mpiexec in PREFIX/bin.
# PREFIX is a throwaway venv that also sees the machine's packages (torch, numba, ...)
# through a .pth file; where no venv can be made, a plain prefix on PYTHONPATH.
SITE_BASE=$("$PY" -c 'import site; print(":".join(site.getsitepackages()))') || { say "no python at PY=$PY"; exit 1; }
PREFIX=$WORK/venv
if step venv 60 "$PY" -m venv --without-pip --clear "$PREFIX"; then
  VPY=$PREFIX/bin/python
  VSITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  tr ':' '\n' <<< "$SITE_BASE" | sed "s|.*|import site; site.addsitedir('&')|" > "$VSITE/_machine.pth"
  EXTRA=""
else
  PREFIX=$WORK/prefix
  VPY=$PY
  EXTRA=:$("$PY" -c 'import sys, sysconfig; print(sysconfig.get_path("purelib", vars={"base": sys.argv[1], "platbase": sys.argv[1]}))' "$PREFIX")
fi
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check --prefix "$PREFIX" "$WHEELS"/*.whl || say "wheel install failed"
else
  say "no wheels in $WHEELS: using what the machine has"
fi
export PATH=$PREFIX/bin:$PATH PYTHONPATH=$REPO$EXTRA
for lib in "$PREFIX"/lib/libmpi.so.12 "$PREFIX"/lib/libmpi.so; do
  [ -e "$lib" ] && { export MPI4PY_LIBMPI=$lib; break; }
done
"$VPY" - > "$RES/env.json" 2>> "$LOG" <<'EOF'
import json, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform()}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available(),
                card=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
                gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
except Exception as exc:  # noqa: BLE001
    info["torch_error"] = repr(exc)
for mod in ("numpy", "numba", "zstandard", "h5py", "mpi4py", "hypothesis"):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as exc:  # noqa: BLE001
        info[mod] = f"missing ({type(exc).__name__})"
print(json.dumps(info))
EOF
say "environment: $(cat "$RES/env.json")"
GPU=$("$VPY" -c 'import json,sys; print(1 if json.load(open(sys.argv[1])).get("cuda_available") else 0)' "$RES/env.json" 2>/dev/null || echo 0)
[ "${GPU_CHECK_CPU:-0}" = 1 ] && GPU=0
[ "$GPU" = 1 ] || say "NOTE: no CUDA device visible: GPU steps are skipped (dry run)"
DEVICE=$([ "$GPU" = 1 ] && echo cuda || echo cpu)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$LOG" 2>&1

# ------------------------------------------------------------------ 2. MPI
MPI_OK=0; MPIEXEC_OK=0; MPIEXEC=(mpiexec)
PROBE="from mpi4py import MPI; c = MPI.COMM_WORLD; assert c.Get_size() == 2; c.Barrier(); print('rank', c.Get_rank(), 'of', c.Get_size())"
if step mpi4py 60 "$VPY" -c "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])"; then
  MPI_OK=1
  if command -v mpiexec >/dev/null; then
    say "mpiexec: $(command -v mpiexec)"
    if step mpiexec 45 mpiexec -n 2 "$VPY" -c "$PROBE"; then
      MPIEXEC_OK=1
    elif step mpiexec-fork 45 mpiexec -launcher fork -n 2 "$VPY" -c "$PROBE"; then
      MPIEXEC_OK=1; MPIEXEC=(mpiexec -launcher fork)  # hydra without ssh/host lookups
    fi
  else
    say "no mpiexec on PATH"
  fi
fi
printf '{"mpi4py_finds_mpi": %s, "mpiexec_runs_2_ranks": %s}\n' "$MPI_OK" "$MPIEXEC_OK" > "$RES/mpi.json"
say "MPI: mpi4py finds a library: $MPI_OK; mpiexec runs 2 ranks: $MPIEXEC_OK"

# ------------------------------------------------------------------ 3. GPU tests
if [ "$GPU" = 1 ]; then
  step gpu-tests 150 "$VPY" -m pytest -q -rs -p no:cacheprovider tests/gpu --timeout 120 \
    --junitxml "$RES/gpu-tests.xml"
else
  step gpu-tests 60 "$VPY" -m pytest -q -rs -p no:cacheprovider tests/gpu
fi

# ------------------------------------------------------------------ 4. data + FL run
DATA=${FEDMPI_CIFAR10:-.gpu-data/cifar10-jpeg.tar.xz}
if [ -e "$DATA" ]; then
  export FEDMPI_CIFAR10=$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")
  echo '{"data": "CIFAR-10 images", "path": "'"$FEDMPI_CIFAR10"'"}' > "$RES/data.json"
else
  say "!!!!!!!! NOTE: CIFAR-10 archive not found ($DATA): a SYNTHETIC CIFAR-shaped data set"
  say "!!!!!!!! (random 32x32 JPEGs, 10 classes) stands in; accuracy figures mean nothing."
  export FEDMPI_CIFAR10=$WORK/synthetic-cifar
  step synthetic-data 60 "$VPY" - "$FEDMPI_CIFAR10" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root, rng = Path(sys.argv[1]), np.random.default_rng(0)
for split, n in (("train", 600), ("test", 100)):
    for c in range(10):
        d = root / split / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = (rng.random((32, 32, 3)) * 64 + c * 19).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
EOF
  echo '{"data": "SYNTHETIC (CIFAR-10 archive missing)"}' > "$RES/data.json"
fi
SUBSET=$([ "$GPU" = 1 ] && echo null || echo 600)  # GPU: all 50,000 training images
TEST_SUBSET=$([ "$GPU" = 1 ] && echo null || echo 200)
RUN_ROUNDS=$([ "$GPU" = 1 ] && echo "$ROUNDS" || echo 2)
SETS=(--set "rounds=$RUN_ROUNDS" --set "run.device=$DEVICE" --set run.ranks_per_gpu=2
      --set "data.train_subset=$SUBSET" --set "data.test_subset=$TEST_SUBSET"
      --set run.checkpoint_every=100 --set name=gpu-check
      --set compression.uplink.0.prune.rate=0.5 --set compression.downlink.0.prune.rate=0.5)
[ "$GPU" = 1 ] || SETS+=(--set train.model=cnn)
step data 120 "$VPY" -c "from fedmpi import data; data.prepare('cifar10')"
if [ "$MPIEXEC_OK" = 1 ]; then
  step fl-run 180 "${MPIEXEC[@]}" -n 3 "$VPY" -m fedmpi run configs/paper/paper.yaml \
    --out "$RES/fl-run.h5" --overwrite "${SETS[@]}"
else
  say "no working mpiexec: training throughput from 2 concurrent 'fedmpi bench train' processes"
  for i in 1 2; do
    step "bench-train-$i" 150 "$VPY" -m fedmpi bench train --device "$DEVICE" \
      --model "$([ "$GPU" = 1 ] && echo resnet12 || echo cnn)" \
      --subset "$([ "$GPU" = 1 ] && echo 10000 || echo 600)" \
      --steps "$([ "$GPU" = 1 ] && echo 400 || echo 20)" --json "$RES/bench-train-$i.json" &
  done
  wait
fi

# ------------------------------------------------------------------ 5. codec benchmarks
if [ "$GPU" = 1 ]; then
  step bench-codec-cuda 120 "$VPY" -m fedmpi bench codec --device cuda --repeat 5 \
    --json "$RES/bench-codec-cuda.json"
else
  step bench-codec-cpu-torch 90 "$VPY" -m fedmpi bench codec --device cpu:0 --params 200000 \
    --repeat 1 --only p0.5+sparse p0.9+sparse --json "$RES/bench-codec-cuda.json"
fi
step bench-codec-cpu 90 "$VPY" -m fedmpi bench codec --repeat 5 --only p0.5+sparse \
  p0.9+sparse "p0.5+sparse(numpy)" "p0.9+sparse(numpy)" --json "$RES/bench-codec-cpu.json"

# ------------------------------------------------------------------ 6. the table
"$VPY" jobs/gpu-check-table.py "$RES" | tee "$OUT/table.md"
[ -f "$RES/fl-run.h5" ] && cp "$RES/fl-run.h5" "$OUT/"
tar -czf "$OUT/gpu-check-files.tar.gz" -C "$RES" --exclude=fl-run.h5 . 2>/dev/null
# $OUT: table.md, gpu-check.log, fl-run.h5, gpu-check-files.tar.gz (the device tool returns <= 8)
say "done in $(( $(date +%s) - START )) s; table: $OUT/table.md, log: $LOG"
