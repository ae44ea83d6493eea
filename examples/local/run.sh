#!/usr/bin/env bash
# The local demo until berth-local lands: three berth-whoami tasks on their own
# loopback addresses (127.0.100.1-3, as berth-local will allocate them) behind
# berth-gateway, configured by a file-provider configuration.
#
#   examples/local/run.sh        # then: curl -H 'Host: whoami.localhost' http://127.0.0.1:8080/
#
# Ctrl-C (or SIGTERM) stops everything it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
WEB=${WEB:-127.0.0.1:8080}
ADMIN=${ADMIN:-127.0.0.1:9900}
TASKS=${TASKS:-3}

echo "[1/3] building berth-gateway and berth-whoami (release; the first build takes several minutes)..."
(cd "$root" && cargo build --release -j2 -p berth-gateway -p berth-examples --bin berth-gateway --bin berth-whoami)

work=$(mktemp -d /tmp/berth-demo.XXXXXX)
pids=()
stop() {
  trap - EXIT INT TERM
  echo; echo "stopping..."
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap stop EXIT INT TERM

echo "[2/3] starting $TASKS whoami tasks"
servers=""
for i in $(seq 1 "$TASKS"); do
  addr="127.0.100.$i:8000"
  "$target_dir/release/berth-whoami" --listen "$addr" --name "whoami-$i" >"$work/whoami-$i.log" 2>&1 &
  pids+=($!)
  servers+="          - url: \"http://$addr\"\n"
done
printf 'http:\n  routers:\n    whoami:\n      rule: "Host(`whoami.localhost`)"\n      service: whoami\n  services:\n    whoami:\n      loadBalancer:\n        servers:\n%b' "$servers" > "$work/dynamic.yml"

echo "[3/3] starting berth-gateway on $WEB (admin $ADMIN)"
RUST_LOG=${RUST_LOG:-info} "$target_dir/release/berth-gateway" --entrypoint "web=$WEB" --admin "$ADMIN" \
  --file-provider "$work/dynamic.yml" --shutdown-delay 0s --log-format text >"$work/gateway.log" 2>&1 &
pids+=($!)

seen=""
for _ in $(seq 1 100); do
  host=$(curl -s -m 1 -H 'Host: whoami.localhost' "http://$WEB/" | awk '/^Hostname:/ {print $2}' || true)
  [[ -n "$host" && " $seen " != *" $host "* ]] && seen+=" $host"
  (( $(wc -w <<<"$seen") >= TASKS )) && break
  sleep 0.1
done
if (( $(wc -w <<<"$seen") < TASKS )); then
  echo "not every task became routable (saw:$seen); gateway log:"; cat "$work/gateway.log"; exit 1
fi
echo "ready"
cat <<MSG
  curl -H 'Host: whoami.localhost' http://$WEB/      # answered by one of:$seen
  curl http://$ADMIN/api/http/services               # endpoints and their health
  open http://$ADMIN/                                 # overview page
Ctrl-C stops everything.
MSG
wait "${pids[-1]}"
