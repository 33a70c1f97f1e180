#!/usr/bin/env bash
# Run the app through `flwr run` (Ray simulation) with a SuperLink of our own,
# stopped by PID afterwards, and fail when the run did not complete.
#
#   scripts/flwr_run.sh [num-supernodes] ["key=value key=value" run-config overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
NODES="${1:-10}"
OVERRIDES="${2:-}"
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac  # relative to the project, or absolute
export PATH="$VENV/bin:$PATH"
export FLWR_HOME="${FLWR_HOME:-$PWD/.flwr}"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_DEDUP_LOGS=0
CPUS="$(python -c 'import os; print(max(1, min(2, os.cpu_count() or 1)))')"

# flwr 1.41 serves the Runtime, Control and Fleet APIs on one HTTP port.
PORT="${FLWR_PORT:-39091}"
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local"

[superlink.local]
address = "127.0.0.1:$PORT"
insecure = true
TOML

LOG="$FLWR_HOME/superlink.log"
flower-superlink --insecure --simulation --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "$PORT" --database ":flwr-in-memory:" > "$LOG" 2>&1 &
LINK_PID=$!
trap 'kill $LINK_PID 2>/dev/null || true; wait $LINK_PID 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 $LINK_PID 2>/dev/null || { cat "$LOG"; echo "SuperLink failed to start" >&2; exit 1; }
  sleep 0.5
done

# The ServerApp runs in another working directory: give it an absolute run directory.
case " $OVERRIDES " in *" run.run-dir="*) ;; *) OVERRIDES="$OVERRIDES run.run-dir='$PWD/runs/default'" ;; esac
ARGS=(run . local --stream --federation-config "num-supernodes=$NODES client-resources-num-cpus=1"
      --run-config "$OVERRIDES")
flwr "${ARGS[@]}" 2>&1 | tee "$FLWR_HOME/last-run.log"

# `flwr run --stream` exits 0 even when the run failed: ask the SuperLink.
RUN_ID="$(grep -oE 'run [0-9]+' "$FLWR_HOME/last-run.log" | head -1 | grep -oE '[0-9]+' || true)"
STATUS="$(flwr ls local --run-id "$RUN_ID" --format json 2>/dev/null || true)"
echo "$STATUS" | grep -q '"finished:completed"' || { echo "run $RUN_ID did not complete: $STATUS" >&2; exit 1; }
echo "run $RUN_ID completed"
