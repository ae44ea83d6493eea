#!/usr/bin/env bash
# North-south benchmark: berth-gateway and nginx as reverse proxies in front of the same
# fixed backend (nginx returning a small body), side by side, in alternating rounds.
#
#   examples/bench/north-south.sh            # full run: 5 rounds x 10 s per proxy
#   SMOKE=1 examples/bench/north-south.sh    # CI smoke: 1 round x 2 s, fails only on errors
#
# Proxies are pinned to CPU 0, wrk and the backend to CPU 1 (when there are 2+ CPUs).
# Prints req/s, p50 and p99 per proxy (medians over rounds) and Berth/nginx ratios, and the
# cost of a chain of five middlewares (Berth's same route behind headers x2, ipAllowList,
# rateLimit, stripPrefix), and the cost of tracing every request (a second berth-gateway
# with OTLP/HTTP export on, to an nginx that accepts and discards the exports).
# Needs: nginx, wrk (Debian: apt-get install nginx-light wrk), cargo.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
if [[ "${SMOKE:-0}" == 1 ]]; then ROUNDS=1; DURATION=2; fi

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found (apt-get install nginx-light wrk)" >&2; exit 2; }
done

echo "bench: building berth-gateway (release)..." >&2
(cd "$root" && cargo build --release -j2 -q -p berth-gateway)
gateway="$target_dir/release/berth-gateway"

work=$(mktemp -d /tmp/berth-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

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

nginx_conf backend "server { listen $BACKEND; location / { default_type text/plain; return 200 'hello from the backend\n'; } }"
nginx_conf sink "server { listen $SINK; client_max_body_size 64m; location / { return 200; } }"
nginx_conf proxy "upstream be { server $BACKEND; keepalive 64; }
  server { listen $NGINX; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }"
cat > "$work/dynamic.yml" <<YML
http:
  routers:
    bench: { rule: "PathPrefix(\`/\`)", service: backend }
    # The same route behind a chain of five middlewares: their cost on throughput.
    chain: { rule: "Host(\`chain.test\`)", service: backend, middlewares: [tag, secure, local, limit, strip] }
  middlewares:
    tag: { headers: { customRequestHeaders: { X-Bench: "1" } } }
    secure: { headers: { frameDeny: true, contentTypeNosniff: true } }
    local: { ipAllowList: { sourceRange: ["127.0.0.0/8"] } }
    limit: { rateLimit: { average: 100000000, burst: 100000000 } }
    strip: { stripPrefix: { prefixes: ["/unused"] } }
  services:
    backend:
      loadBalancer:
        servers: [ { url: "http://$BACKEND" } ]
YML

start() { # name, command...
  local name=$1; shift
  setsid "$@" >"$work/$name.out" 2>&1 </dev/null &
  pids+=($!)
}
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>/dev/tcp/${1%:*}/${1#*:}) 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: $2 did not start; its output:" >&2; cat "$work/$2.out" >&2; exit 1
}

start backend "${pin_load[@]}" nginx -c "$work/backend/nginx.conf"
start nginx "${pin_proxy[@]}" nginx -c "$work/proxy/nginx.conf"
start berth env RUST_LOG=warn "${pin_proxy[@]}" "$gateway" --entrypoint "web=$BERTH" --admin "$BERTH_ADMIN" \
  --file-provider "$work/dynamic.yml" --log-format json --shutdown-delay 0s
# Every request traced (sampler always on), exported as OTLP/HTTP protobuf.
start sink "${pin_load[@]}" nginx -c "$work/sink/nginx.conf"
start traced env RUST_LOG=warn OTEL_EXPORTER_OTLP_ENDPOINT="http://$SINK" OTEL_TRACES_SAMPLER=always_on \
  OTEL_BSP_SCHEDULE_DELAY=1000 "${pin_proxy[@]}" "$gateway" --entrypoint "web=$TRACED" --admin "$TRACED_ADMIN" \
  --file-provider "$work/dynamic.yml" --log-format json --shutdown-delay 0s
wait_port $BACKEND backend; wait_port $NGINX nginx; wait_port $BERTH berth
wait_port $SINK sink; wait_port $TRACED traced

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
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Warm up both, then alternate so drift hits both equally.
"${pin_load[@]}" wrk -t1 -c"$CONNS" -d1s -H 'Host: bench.test' "http://$NGINX/" >/dev/null 2>&1 || true
"${pin_load[@]}" wrk -t1 -c"$CONNS" -d1s -H 'Host: bench.test' "http://$BERTH/" >/dev/null 2>&1 || true
for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 )); then run nginx $NGINX "$round"; run berth $BERTH "$round"; run berth5mw $BERTH "$round" chain.test
    run traced $TRACED "$round"
  else run traced $TRACED "$round"; run berth5mw $BERTH "$round" chain.test; run berth $BERTH "$round"
    run nginx $NGINX "$round"; fi
done

berth_rss=$(awk '/VmRSS/ {print $2}' /proc/"${pids[2]}"/status 2>/dev/null || echo "?")
echo
echo "north-south, HTTP/1.1 keep-alive, $CONNS connections, ${DURATION}s x $ROUNDS rounds (medians)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $ncpu cores; proxies on CPU 0, wrk+backend on CPU 1"
printf '%-14s %12s %10s %10s\n' proxy req/s p50_ms p99_ms
for n in nginx berth berth5mw traced; do
  printf '%-14s %12.0f %10s %10s\n' "$n" "$(median "${rps[$n]:-0}")" "$(median "${p50[$n]:-0}")" "$(median "${p99[$n]:-0}")"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
echo "berth/nginx: throughput $(ratio "$(median "${rps[berth]:-0}")" "$(median "${rps[nginx]:-0}")")x," \
  "p99 $(ratio "$(median "${p99[berth]:-0}")" "$(median "${p99[nginx]:-0}")")x (lower is better)"
echo "berth with 5 middlewares / berth: throughput $(ratio "$(median "${rps[berth5mw]:-0}")" "$(median "${rps[berth]:-0}")")x," \
  "p99 $(ratio "$(median "${p99[berth5mw]:-0}")" "$(median "${p99[berth]:-0}")")x"
echo "berth traced (every request, OTLP/HTTP) / berth: throughput $(ratio "$(median "${rps[traced]:-0}")" "$(median "${rps[berth]:-0}")")x," \
  "p99 $(ratio "$(median "${p99[traced]:-0}")" "$(median "${p99[berth]:-0}")")x"
spans=$(curl -s "http://$TRACED_ADMIN/metrics" | awk -F'[{}" ]+' '/^berth_trace_spans_total/ {printf "%s %s  ", $3, $NF}')
echo "traced gateway's spans: ${spans:-unknown}"
echo "berth-gateway RSS after the run: ${berth_rss} kB"
if (( errors > 0 )); then echo "bench: FAILED with $errors errors" >&2; exit 1; fi
