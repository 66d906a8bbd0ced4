#!/usr/bin/env bash
# Command one: set up (if needed) and start ComfyUI with the pack at http://127.0.0.1:${PORT:-8188}.
# Extra arguments go to ComfyUI's main.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8188}"
"$PY" - "$HOST" "$PORT" <<'PYEOF' || exit 1
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
try:
    s.bind((host, port))
except OSError:
    sys.exit(f"run: port {port} on {host} is already in use (another ComfyUI?). Stop it or choose another: PORT=8189 bash scripts/run.sh")
finally:
    s.close()
PYEOF
device_args=()
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || device_args=(--cpu)
echo "run: starting ComfyUI at http://$HOST:$PORT ${device_args[*]:+(no GPU found: --cpu)}"
cd "$COMFYUI_DIR"
exec "$PY" main.py --listen "$HOST" --port "$PORT" "${device_args[@]}" "$@"
