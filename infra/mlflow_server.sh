#!/usr/bin/env bash
# Start an MLflow tracking server with a sqlite backend and a local artifact store.
#
#   infra/mlflow_server.sh [--port 5000] [--dir mlflow-server]      # laptop: 127.0.0.1 only; open http://127.0.0.1:5000
#   infra/mlflow_server.sh --host "$(hostname -I | awk '{print $1}')" --dir /mnt/shared/mlflow   # cluster head
#   infra/mlflow_server.sh --host 10.0.0.5 --artifacts s3://my-bucket/mlflow   # no shared disk: artifacts on S3
#   MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python jobs/train_anet.py --config jobs/configs/demo.yaml
#
# --host: the interface to listen on (default 127.0.0.1). On a cluster, the head's private address, so that the
#   workers' jobs reach http://<head>:5000; the security group must then limit port 5000 to the cluster's own
#   nodes: this server has no authentication, whoever reaches the port can read and write every run and model.
#   0.0.0.0 and :: (every interface) are refused for that reason.
# --allowed-hosts: Host headers MLflow's security middleware accepts (DNS-rebinding guard); default
#   <host>:<port>, localhost and 127.0.0.1 on any port.
# The store lives in <dir>/mlflow.db, artifacts in <dir>/artifacts (served through the server: clients need no
# access to the folder), or with --artifacts in that URI (s3://bucket/prefix, gs://...): the server reads and writes
# it with its own credentials (for S3 the standard AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION,
# and AWS_ENDPOINT_URL for an S3-compatible store; for GCS GOOGLE_APPLICATION_CREDENTIALS or the node's service
# account, and STORAGE_EMULATOR_HOST for an emulator) and MLflow's client of the store (pip install '.[cloud]');
# clients upload and download through the server and need none.
# To browse the embedded default store of `make demo` without a server instead:
#   .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db
set -euo pipefail
port=5000
dir=mlflow-server
host=127.0.0.1
allowed=""
artifacts=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --allowed-hosts) allowed="$2"; shift 2 ;;
    --artifacts) artifacts="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (use --port N, --dir PATH, --host ADDR, --allowed-hosts LIST, --artifacts URI)" >&2
       exit 2 ;;
  esac
done
case "$host" in
  0.0.0.0|::|"[::]"|"")
    echo "--host ${host:-''}: every interface; this MLflow server has no authentication. Give the head's private" \
         "address (and limit port 5000 to the cluster in its security group)" >&2
    exit 2 ;;
esac
[[ "$port" =~ ^[0-9]+$ ]] || { echo "--port $port: not a port number" >&2; exit 2; }
[[ -n "$allowed" ]] || allowed="$host:$port,localhost:*,127.0.0.1:*"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mlflow_bin="${MLFLOW_BIN:-$here/.venv/bin/mlflow}"
[[ -x "$mlflow_bin" ]] || mlflow_bin="$(command -v mlflow)"
needs() {  # $1: the module MLflow's server uses for the store, $2: its package; both in the `cloud` extra
  "$(dirname "$mlflow_bin")/python" -c "import $1" 2>/dev/null && return 0
  echo "--artifacts $artifacts: the server's Python has no $2 (MLflow's client of that store): pip install" \
       "'.[cloud]' (or $2) beside it" >&2
  exit 2
}
case "$artifacts" in
  "") mkdir -p "$dir/artifacts" ;;
  s3://?*) needs boto3 boto3 ;;
  gs://?*) needs google.cloud.storage google-cloud-storage ;;
  *) echo "--artifacts $artifacts: give an s3://bucket/prefix or gs://bucket/prefix URI (default: <dir>/artifacts)" >&2
     exit 2 ;;
esac
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
exec "$mlflow_bin" server --host "$host" --port "$port" --allowed-hosts "$allowed" \
  --backend-store-uri "sqlite:///$dir/mlflow.db" \
  --artifacts-destination "${artifacts:-$dir/artifacts}" --serve-artifacts \
  --workers 1
