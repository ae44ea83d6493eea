#!/usr/bin/env bash
# Instructions per request on the north-south forward path, counted by callgrind: a
# profile that repeats to the instruction whatever else the machine is doing (this
# machine's speed drifts by up to 45 % between runs; instruction counts do not). User
# space only: the kernel's share, about half the gateway's CPU, is the same loopback work
# for every proxy. See docs/benchmarks.md for what the counts showed.
#
#   examples/bench/instructions.sh                 # berth-gateway (untraced, tracing on but
#                                                  # nothing sampled, 10 %, every request) and nginx
#   examples/bench/instructions.sh plain nginx     # some of them
#   N=5000 examples/bench/instructions.sh plain    # fewer requests (default 20,000)
#   BERTH_BIN_DIR=DIR examples/bench/instructions.sh plain   # DIR's berth-gateway, not a build
#
# Each target: started under `valgrind --tool=callgrind`, 2,000 requests to warm up, the
# counters zeroed, N requests (h2load --h1, 50 connections), the counters dumped. The
# dumps stay in $OUT (default /tmp/berth-instructions) for callgrind_annotate, e.g.
#   callgrind_annotate --inclusive=yes $OUT/plain.out | head -60
# Needs: valgrind, nginx, h2load (Debian: valgrind nginx-light nghttp2-client), cargo.
set -euo pipefail
[[ -n "${TRACE:-}" ]] && set -x

N=${N:-20000}
OUT=${OUT:-/tmp/berth-instructions}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=examples/bench/lib.sh
source "$here/lib.sh"
target_dir=${CARGO_TARGET_DIR:-$root/target}
need_tools "apt-get install valgrind nginx-light nghttp2-client curl" valgrind callgrind_control callgrind_annotate nginx h2load curl
targets=("$@")
(( ${#targets[@]} )) || targets=(plain unsampled ratio10 always_on nginx)

if [[ -n "${BERTH_BIN_DIR:-}" ]]; then
  gateway="$BERTH_BIN_DIR/berth-gateway"   # a prebuilt gateway (another commit, to compare)
else
  echo "bench: building berth-gateway (release)..." >&2
  (cd "$root" && cargo build --release -j2 -q -p berth-gateway)
  gateway="$target_dir/release/berth-gateway"
fi

work=$(mktemp -d /tmp/berth-instructions.XXXXXX)
mkdir -p "$OUT"
pids=()
trap stop_all EXIT INT TERM

BACKEND=127.0.0.1:18290
SINK=127.0.0.1:18296
PROXY=127.0.0.1:18392
ADMIN=127.0.0.1:18393
nginx_conf() { # name, server blocks
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1;
error_log $work/$1/error.log warn; pid $work/$1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $work/$1; proxy_temp_path $work/$1; fastcgi_temp_path $work/$1;
  uwsgi_temp_path $work/$1; scgi_temp_path $work/$1;
  $2
}
CONF
}
nginx_conf backend "server { listen $BACKEND; location / { default_type text/plain; return 200 'hello from the backend\n'; } }"
nginx_conf sink "server { listen $SINK; client_max_body_size 64m; location / { return 200; } }"
nginx_conf proxy "upstream be { server $BACKEND; keepalive 64; }
  server { listen $PROXY; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }"
cat > "$work/dynamic.yml" <<YML
http:
  routers:
    bench: { rule: "PathPrefix(\`/\`)", service: backend }
  services:
    backend:
      loadBalancer:
        servers: [ { url: "http://$BACKEND" } ]
YML
start backend nginx -c "$work/backend/nginx.conf"
start sink nginx -c "$work/sink/nginx.conf"
wait_port $BACKEND backend; wait_port $SINK sink

otlp=(OTEL_EXPORTER_OTLP_ENDPOINT="http://$SINK" OTEL_BSP_SCHEDULE_DELAY=1000)
count() { # name, command...
  local name=$1; shift
  rm -f "$OUT/$name".*
  # --trace-children: the command may be `env ... berth-gateway`, which execs it.
  setsid valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$OUT/$name.%p" "$@" > "$work/$name.out" 2>&1 < /dev/null &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 200); do curl -s -o /dev/null "http://$PROXY/" && break; sleep 0.2; done
  h2load --h1 -n 2000 -c 50 -t 1 "http://$PROXY/" > /dev/null
  callgrind_control -z "$pid" > /dev/null 2>&1
  local res; res=$(h2load --h1 -n "$N" -c 50 -t 1 "http://$PROXY/")
  grep -q "status codes: $N 2xx" <<<"$res" || { echo "bench: $name did not answer $N requests with 2xx:" >&2; echo "$res" >&2; exit 1; }
  sleep 1
  callgrind_control -d "$pid" > /dev/null 2>&1
  sleep 1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local dump; dump=$(ls "$OUT/$name".*.1 | tail -1)
  mv "$dump" "$OUT/$name.out"
  local total; total=$(callgrind_annotate "$OUT/$name.out" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  printf '%-10s %10d instructions per request\n' "$name" $((total / N))
}
berth=("$gateway" --entrypoint "web=$PROXY" --admin "$ADMIN" --file-provider "$work/dynamic.yml" --log-format json --shutdown-delay 0s)
echo "instructions per request (user space, callgrind), $N requests over 50 connections after 2,000 to warm up"
for t in "${targets[@]}"; do
  case $t in
    plain) count plain env RUST_LOG=warn "${berth[@]}" ;;
    unsampled) count unsampled env RUST_LOG=warn "${otlp[@]}" OTEL_TRACES_SAMPLER=always_off "${berth[@]}" ;;
    ratio10) count ratio10 env RUST_LOG=warn "${otlp[@]}" OTEL_TRACES_SAMPLER=parentbased_traceidratio \
      OTEL_TRACES_SAMPLER_ARG=0.1 "${berth[@]}" ;;
    always_on) count always_on env RUST_LOG=warn "${otlp[@]}" OTEL_TRACES_SAMPLER=always_on "${berth[@]}" ;;
    nginx) count nginx nginx -c "$work/proxy/nginx.conf" ;;
    *) echo "bench: unknown target $t (plain unsampled ratio10 always_on nginx)" >&2; exit 2 ;;
  esac
done
echo "dumps in $OUT (callgrind_annotate --inclusive=yes $OUT/NAME.out)"
