#!/usr/bin/env bash
# The paper's open question 2 at CPU scale: client-specific pruning rates against the
# uniform θ that spends the same total uplink bytes, per seed (results/README.md,
# "Client-specific pruning rates"). Two rules, SEEDS (default 0 1 2), 4 runs per seed,
# about a minute each on an idle 2-core VM (~12 min for 3 seeds):
#   1. bandwidth: budgets from a random link model (lognormal uplinks, median 10 Mbit/s,
#      sigma 0.5), what each client's uplink moves in 0.75 s (slow links prune more);
#   2. samples: θ linear in the local sample count (0.9 .. 0.5) on quantity-skewed
#      clients (lognormal sizes, sigma 1).
# Each rule run is followed by its uniform twin (`python -m fedmpi.compressors.client_rate`
# prints θ_u); finished files are skipped. Then the two comparison tables.
#
#   FEDMPI_CIFAR10=/path/cifar10-jpeg.tar.xz jobs/paper-rate.sh    # from anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MPIEXEC=${MPIEXEC:-.venv/bin/mpiexec}
RANKS=${RANKS:-3}
SEEDS=${SEEDS:-0 1 2}
OUT=${OUT:-results/paper-rate}
CONFIG=configs/paper/cpu.yaml
mkdir -p "$OUT"

run() {  # OUT_FILE, then --set arguments; skipped when the file exists
  local out=$1; shift
  [ -e "$out" ] && { echo "paper-rate.sh: $out exists, skipped"; return 0; }
  $MPIEXEC -n "$RANKS" "$PY" -m fedmpi run "$CONFIG" --out "$out" "$@"
}
uniform_theta() {
  "$PY" -m fedmpi.compressors.client_rate "$1" | sed -n 's/.*prune\.rate=\([0-9.]*\).*/\1/p'
}

LINK=(--set link.kind=random --set link.up_bps=10000000 --set link.spread=0.5)
SKEW=(--set "data.partition={method: lda, alpha: 100.0, size_sigma: 1.0}")
pairs_bw=() pairs_samples=()
for s in $SEEDS; do
  run "$OUT/bandwidth_seed=$s.h5" --set seed="$s" "${LINK[@]}" \
    --set "compression.client_rate={rule: bandwidth, seconds: 0.75, min: 0.3, max: 0.95}"
  run "$OUT/uniform_seed=$s.h5" --set seed="$s" "${LINK[@]}" \
    --set compression.uplink.0.prune.rate="$(uniform_theta "$OUT/bandwidth_seed=$s.h5")"
  run "$OUT/samples_seed=$s.h5" --set seed="$s" "${SKEW[@]}" \
    --set "compression.client_rate={rule: samples, min: 0.5, max: 0.9}"
  run "$OUT/samples-uniform_seed=$s.h5" --set seed="$s" "${SKEW[@]}" \
    --set compression.uplink.0.prune.rate="$(uniform_theta "$OUT/samples_seed=$s.h5")"
  pairs_bw+=("$OUT/bandwidth_seed=$s.h5" "$OUT/uniform_seed=$s.h5")
  pairs_samples+=("$OUT/samples_seed=$s.h5" "$OUT/samples-uniform_seed=$s.h5")
done
echo "bandwidth rule vs uniform θ of the same bytes:"
"$PY" -m fedmpi.compressors.client_rate --compare "${pairs_bw[@]}"
echo "samples rule vs uniform θ of the same bytes:"
"$PY" -m fedmpi.compressors.client_rate --compare "${pairs_samples[@]}"
