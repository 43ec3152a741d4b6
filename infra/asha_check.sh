#!/usr/bin/env bash
# ASHA's stopped trials give their CPUs back on a cluster that is not the machine's default one: a head started with
# `ray start --head --temp-dir`, a second cluster beside it (started first), and the smoke ASHA sweep submitted to
# the head. Prints Table D, the wall time, and `ray status` of both clusters (expect 0.0/2.0 CPU used on each).
#   bash infra/asha_check.sh [work dir, default /tmp/sofnet-asha-check]        (~4 min on 2 cores)
# Both clusters are stopped by process group at the end, also on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=disabled DS_ACCELERATOR=cpu PYTHONUNBUFFERED=1
PY=.venv/bin/python RAY=.venv/bin/ray W=${1:-/tmp/sofnet-asha-check}
rm -rf "$W" && mkdir -p "$W/head" "$W/other"
groups=()
trap 'for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done; sleep 5;
      for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done' EXIT
start() {  # start <temp dir>: a head on free ports, its process group recorded; waits (bounded) for its address
  local p c d a
  read -r p c d a <<< "$($PY -c 'from sofnet.session import free_ports; print(*free_ports(4))')"
  setsid "$RAY" start --head --port="$p" --ray-client-server-port="$c" --dashboard-port="$d" \
    --dashboard-agent-listen-port="$a" --num-cpus=2 --temp-dir="$1" --disable-usage-stats --block > "$1.log" 2>&1 &
  groups+=($!)
  for _ in $(seq 120); do test -s "$1/ray_current_cluster" && return 0; sleep 1; done
  echo "no Ray head after 120 s: $1.log" >&2; exit 1
}
start "$W/other"
start "$W/head"
sleep 3
head=$(cat "$W/head/ray_current_cluster")
echo "head $head, other cluster $(cat "$W/other/ray_current_cluster")"
start_s=$(date +%s)
RAY_ADDRESS=$head timeout 1500 $PY jobs/tune_alpha_beta.py --sweep jobs/configs/tune/alpha_beta_asha.yaml \
  --smoke-test "storage_path=$W/tune" "mlflow.tracking_uri=sqlite:///$W/mlflow.db"
rc=$?
echo "sweep exit $rc after $(( $(date +%s) - start_s )) s"
for c in head other; do
  echo "$c: $(RAY_ADDRESS=$(cat "$W/$c/ray_current_cluster") timeout 60 $RAY status 2>&1 | grep -A1 'Total Usage' | tail -1)"
done
exit $rc
