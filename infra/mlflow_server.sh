#!/usr/bin/env bash
# Start an MLflow tracking server on 127.0.0.1 with a sqlite backend and a local artifact store, for the UI.
#
#   infra/mlflow_server.sh [--port 5000] [--dir mlflow-server]      # then open http://127.0.0.1:5000
#   MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python jobs/train_anet.py --config jobs/configs/demo.yaml
#
# The store lives in <dir>/mlflow.db, artifacts in <dir>/artifacts (served through the server: clients need no
# access to the folder). To browse the embedded default store of `make demo` without a server instead:
#   .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db
set -euo pipefail
port=5000
dir=mlflow-server
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (use --port N, --dir PATH)" >&2; exit 2 ;;
  esac
done
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mlflow_bin="${MLFLOW_BIN:-$here/.venv/bin/mlflow}"
[[ -x "$mlflow_bin" ]] || mlflow_bin="$(command -v mlflow)"
mkdir -p "$dir/artifacts"
dir="$(cd "$dir" && pwd)"
exec "$mlflow_bin" server --host 127.0.0.1 --port "$port" \
  --backend-store-uri "sqlite:///$dir/mlflow.db" \
  --artifacts-destination "$dir/artifacts" --serve-artifacts \
  --workers 1
