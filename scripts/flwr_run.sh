#!/usr/bin/env bash
# Run the app through `flwr run` (Ray simulation) with a SuperLink of our own,
# stopped by PID afterwards, and fail when the run did not complete.
#
#   scripts/flwr_run.sh [num-supernodes] ["key=value key=value" run-config overrides]
#
# Overrides are written as for the in-process runner (config=llm train.lr=0.02): bare strings
# are quoted for Flower, and the run directory is the one the overrides or the preset name
# (run.run-dir, else conf/<preset>.yaml's), anchored at the project (flower_app/config/overrides.py).
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

# Checked before anything starts: a bad pair is one line naming it, not Flower's error box.
RUN_CONFIG="$("$VENV/bin/python" -m flower_app.config.overrides --project-root "$PWD" -- "$OVERRIDES")" || exit 2

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

ARGS=(run . local --stream --federation-config "num-supernodes=$NODES client-resources-num-cpus=1"
      --run-config "$RUN_CONFIG")
flwr "${ARGS[@]}" 2>&1 | tee "$FLWR_HOME/last-run.log"

# `flwr run --stream` exits 0 even when the run failed: ask the SuperLink.
RUN_ID="$(grep -oE 'run [0-9]+' "$FLWR_HOME/last-run.log" | head -1 | grep -oE '[0-9]+' || true)"
STATUS="$(flwr ls local --run-id "$RUN_ID" --format json 2>/dev/null || true)"
echo "$STATUS" | grep -q '"finished:completed"' || { echo "run $RUN_ID did not complete: $STATUS" >&2; exit 1; }
echo "run $RUN_ID completed"
