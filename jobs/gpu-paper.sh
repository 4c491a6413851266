#!/usr/bin/env bash
# A meaningful slice of the paper's grid on ONE GPU in about 8 minutes:
# ResNet-12, full CIFAR-10, 10 clients (40% per round), E = 1, 30 rounds,
# θ ∈ {0, 0.5, 0.9}; 3 MPI ranks (server + 2 workers) share the GPU.
#
#   jobs/gpu-paper.sh                 # from the repository root, after `make install`
#   DEADLINE_S=420 jobs/gpu-paper.sh  # stop the sweep (gracefully) after 420 s
#
# Each run checkpoints; when the deadline passes the current run gets SIGUSR1, stops
# after its round (status 'interrupted') and the next call of this script resumes it.
# Then it writes results/paper-gpu/report/ (table + plots) and prints per-run timing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MPIEXEC=${MPIEXEC:-.venv/bin/mpiexec}
RANKS=${RANKS:-3}
SWEEP=${SWEEP:-configs/paper/sweep-gpu.yaml}
DEADLINE_S=${DEADLINE_S:-450}
DRY_RUN=${DRY_RUN:-0}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu-paper.sh: no CUDA device visible to torch" >&2; [ "$DRY_RUN" = 1 ] || exit 1; }
[ "$DRY_RUN" = 1 ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

start=$(date +%s)
n=$("$PY" -m fedmpi sweep "$SWEEP" --count) || exit 1
for i in $(seq 0 $((n - 1))); do
  left=$(( DEADLINE_S - ($(date +%s) - start) ))
  if [ "$left" -le 0 ]; then echo "gpu-paper.sh: deadline reached before task $i"; break; fi
  if [ "$DRY_RUN" = 1 ]; then
    "$PY" -m fedmpi sweep "$SWEEP" --task "$i" --launch "$MPIEXEC -n $RANKS" --dry-run
    continue
  fi
  # `fedmpi sweep` forwards SIGUSR1 to the run: a graceful, resumable stop at the deadline.
  "$PY" -m fedmpi sweep "$SWEEP" --task "$i" --launch "$MPIEXEC -n $RANKS" &
  pid=$!
  ( sleep "$left" && kill -USR1 "$pid" 2>/dev/null ) &
  timer=$!
  wait "$pid"; code=$?
  kill "$timer" 2>/dev/null; wait "$timer" 2>/dev/null
  [ "$code" = 0 ] || [ "$code" = 75 ] || { echo "gpu-paper.sh: task $i failed ($code)" >&2; exit "$code"; }
done
[ "$DRY_RUN" = 1 ] && exit 0
"$PY" -m fedmpi report results/paper-gpu/*.h5 --out results/paper-gpu/report --all-runs
for f in results/paper-gpu/*.h5; do "$PY" -m fedmpi inspect "$f" | grep -E "^(file|status|accuracy|bytes|time):"; done
