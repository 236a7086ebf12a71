#!/usr/bin/env bash
# The quick-start demo on this machine, with the provisioner's embedded default:
#   inletsctl create --provider local   -> an exit server (control 127.0.0.1, data plane 127.0.0.2)
#   a local HTTP service on 127.0.0.1:PORT, the client command exactly as inletsctl printed it,
#   a request to the exit server's public side 127.0.0.2:PORT that crosses the tunnel,
#   then inletsctl delete. The data plane listens on 127.0.0.2 so it never collides with
#   the upstream on 127.0.0.1 using the same port.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup.sh
source "$root/scripts/setup.sh"
cd "$root"
export PATH="$root/.venv/bin:$PATH"
py="$root/.venv/bin/python"

work="$(mktemp -d)"
state="$work/state"
name="demo-$$"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  inletsctl delete "$name" --state-dir "$state" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

port="${DEMO_PORT:-$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.2", 0)); print(s.getsockname()[1])')}"
mkdir -p "$work/site"
echo "Hello from the service behind the tunnel" > "$work/site/index.html"

echo "== 1. a local HTTP service on 127.0.0.1:$port"
"$py" -m http.server "$port" --bind 127.0.0.1 --directory "$work/site" >"$work/http.log" 2>&1 &
pids+=($!)

echo "== 2. inletsctl create $name --provider local --ports $port"
inletsctl create "$name" --provider local --ports "$port" --state-dir "$state" --timeout 60 | tee "$work/create.txt"
client_command="$(sed -n 's/^  \(inlets [a-z]* client .*\)$/\1/p' "$work/create.txt")"
[ -n "$client_command" ] || { echo "demo: no client command in inletsctl's output" >&2; exit 1; }

echo "== 3. the printed client command, as printed"
bash -c "exec $client_command" >"$work/client.log" 2>&1 &
pids+=($!)

echo "== 4. a request to the exit server's public side, http://127.0.0.2:$port/"
"$py" - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.2:{sys.argv[1]}/"
deadline = time.monotonic() + 30
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            print(f"   {response.status} {response.read().decode().strip()}")
            break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"demo: {url} did not answer through the tunnel: {exc}")
        time.sleep(0.3)
PY

echo "== 5. inletsctl delete $name"
inletsctl delete "$name" --state-dir "$state"
echo "demo: OK, the request crossed the tunnel"
