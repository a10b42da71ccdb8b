#!/usr/bin/env bash
# Smoke-test a built image the way production runs it:
#   scripts/smoke-image.sh IMAGE
#
# Runs the container with a read-only root filesystem, no capabilities and
# no-new-privileges, then checks: the HEALTHCHECK turns healthy; /health and an
# API route answer;{% if cookiecutter.use_json_logging %} stdout is JSON lines;{% endif %}{% if cookiecutter.use_metrics %} /metrics answers;{% endif %} the process runs
# as uid 10001; no .env, tests, git data or uv cache are in the image; SIGTERM
# during a burst of requests ends it with exit code 0 within the grace period,
# and every request that reached the server got a 200.
#
# Needs docker and python3 on a Linux host (the container is reached on its
# bridge address, so that a closed listener is told apart from a lost request).
set -euo pipefail

IMAGE=${1:?usage: $0 IMAGE}
DOCKER=${DOCKER:-docker}
PORT={{ cookiecutter.port }}
APP_UID=10001
GRACE_SECONDS=${GRACE_SECONDS:-30}
NAME="smoke-{{ cookiecutter.project_slug }}-$$"

cleanup() { "$DOCKER" rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    "$DOCKER" logs --tail 40 "$NAME" >&2 2>&1 || true
    exit 1
}
pass() { echo "ok: $*"; }
state() { "$DOCKER" inspect -f "$1" "$NAME"; }

{% raw -%}
"$DOCKER" run -d --name "$NAME" --read-only --cap-drop ALL --security-opt no-new-privileges \
    --health-interval 1s --health-start-period 30s "$IMAGE" >/dev/null
IP=$(state '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
[ -n "$IP" ] || fail "the container has no bridge address"

status=starting
for _ in $(seq 1 120); do
    [ "$(state '{{.State.Running}}')" = true ] || fail "the container stopped"
    status=$(state '{{.State.Health.Status}}')
    [ "$status" = starting ] || break
    sleep 0.5
done
[ "$status" = healthy ] || fail "HEALTHCHECK: $status"
pass "HEALTHCHECK healthy"
{%- endraw %}

python3 - "$IP" "$PORT" <<'PY' || fail "endpoints"
import json, sys, urllib.request

ip, port = sys.argv[1], sys.argv[2]


def get(path):
    with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=10) as response:
        return response.status, response.read().decode()


status, body = get("/health")
assert status == 200 and json.loads(body) == {"status": "ok"}, body
for item in (1, 2, 3):
    status, body = get(f"/api/items/{item}")
    assert status == 200, body
{%- if cookiecutter.use_metrics %}
status, body = get("/metrics")
assert status == 200 and "http_server_request_duration_seconds_count" in body, body[:500]
{%- endif %}
PY
pass "/health and /api/items answer{% if cookiecutter.use_metrics %}, /metrics has the request histogram{% endif %}"
{%- if cookiecutter.use_json_logging %}

python3 - "$DOCKER" "$NAME" <<'PY' || fail "stdout is not JSON log lines"
import json, subprocess, sys, time

docker, name = sys.argv[1], sys.argv[2]
# The service writes log lines from a background thread, a few milliseconds
# after the response; give them a moment to reach the container's log.
deadline = time.monotonic() + 10
while True:
    stdout = subprocess.run([docker, "logs", name], capture_output=True, text=True, check=True).stdout
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    if any(r.get("logger") == "access" for r in records) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
assert records, "no log lines on stdout"
assert all({"timestamp", "level", "message"} <= r.keys() for r in records)
assert any(r.get("logger") == "access" for r in records), "no access log lines"
PY
pass "stdout is JSON log lines"
{%- endif %}

uid=$("$DOCKER" exec "$NAME" id -u)
[ "$uid" = "$APP_UID" ] || fail "runs as uid $uid, expected $APP_UID"
pass "runs as uid $uid"

"$DOCKER" exec "$NAME" touch /tmp/probe 2>/dev/null && fail "the root filesystem is writable"
pass "read-only root filesystem"

"$DOCKER" exec "$NAME" python -c '
import os, sys
bad = []
for root, dirs, files in os.walk("/"):
    if root.startswith(("/proc", "/sys", "/dev")):
        dirs[:] = []
        continue
    for name in dirs + files:
        path = os.path.join(root, name)
        if name in (".env", ".git", ".cache", "uv", "uv.lock") or name.startswith(".env."):
            bad.append(path)
        if root == "/app" and name != ".venv":
            bad.append(path)
sys.exit("\n".join(bad) or None)
' || fail "files that do not belong in the image"
pass "no .env, tests, git data or uv cache in the image"

python3 - "$DOCKER" "$NAME" "$IP" "$PORT" "$GRACE_SECONDS" <<'PY' || fail "graceful shutdown"
import http.client, subprocess, sys, threading, time

docker, name, ip, port, grace = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
lock = threading.Lock()
tally = {"ok": 0, "refused": 0, "closed_unread": 0}
lost = []
stop = threading.Event()


def burst(worker):
    item = worker * 100_000
    while not stop.is_set():
        item += 1
        conn = http.client.HTTPConnection(ip, port, timeout=1)
        try:
            try:
                conn.connect()
            except OSError:
                outcome = "refused"
                time.sleep(0.05)
            else:
                conn.sock.settimeout(10)
                try:
                    conn.request("GET", f"/api/items/{item}", headers={"Connection": "close"})
                    response = conn.getresponse()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    outcome = "closed_unread"  # accepted by the kernel, never read by the server
                else:
                    response.read()
                    outcome = "ok" if response.status == 200 else f"HTTP {response.status}"
        except Exception as error:  # a request that reached the server and failed
            outcome = repr(error)
        finally:
            conn.close()
        with lock:
            if outcome in tally:
                tally[outcome] += 1
            else:
                lost.append(outcome)


threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
for thread in threads:
    thread.start()
time.sleep(1.0)
sent = time.monotonic()
subprocess.run([docker, "kill", "--signal", "TERM", name], check=True, capture_output=True)
code = subprocess.run([docker, "wait", name], capture_output=True, text=True, timeout=grace + 5).stdout.strip()
elapsed = time.monotonic() - sent
stop.set()
for thread in threads:
    thread.join()
print(f"SIGTERM: exit code {code} after {elapsed:.1f} s; requests: {tally}, lost: {lost}")
assert code == "0", f"exit code {code}"
assert elapsed < grace, f"stopped after {elapsed:.1f} s, grace period {grace} s"
assert tally["ok"] > 0 and not lost, lost
# Each client thread may have had one connection waiting in the kernel's queue
# when the listener closed; the server never read it, so nothing was lost.
assert tally["closed_unread"] <= len(threads), tally
PY
pass "SIGTERM under load: exit 0, no request lost"
echo "smoke test passed: $IMAGE"
