# Shared by the benchmark scripts (sourced, not run).

# make_mesh_certs NAME...: in the current directory, a CA (ca.crt, ca.key) and for each
# NAME a P-256 certificate (NAME.crt, NAME.key) with the SPIFFE ID
# spiffe://berth.local/ecs/default/NAME as URI SAN, for Envoy set up as Berth's mesh.
make_mesh_certs() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
  local who
  for who in "$@"; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" -keyout "$who.key" -out "$who.csr" 2>/dev/null
    printf 'subjectAltName=URI:spiffe://berth.local/ecs/default/%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$who" > "$who.ext"
    openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile "$who.ext" -out "$who.crt" 2>/dev/null
  done
}

# h2load_stats OUTPUT LOG: from h2load's OUTPUT and its per-request LOG (--log-file),
# prints "REQ_PER_S P50_MS P99_MS FAILED NON_2XX PROTOCOL" (REQ_PER_S "-" if h2load
# did not finish). Latencies are to the end of each response.
h2load_stats() {
  local r bad non2xx proto l50 l99
  r=$(awk '/^finished in/ {gsub(",", ""); print $4}' <<<"$1")
  bad=$(awk '/^requests:/ {gsub(",", ""); print $10 + $12 + $14}' <<<"$1")
  non2xx=$(awk '/^status codes:/ {gsub(",", ""); print $5 + $7 + $9}' <<<"$1")
  proto=$(awk '/^Application protocol:/ {print $3}' <<<"$1")
  read -r l50 l99 < <(awk -F'\t' '{print $3}' "$2" 2>/dev/null | sort -n | awk '{a[NR]=$1} END {
    if (NR == 0) { print "0 0"; exit }
    i50 = int(NR*0.50); if (i50 < 1) i50 = 1; i99 = int(NR*0.99); if (i99 < 1) i99 = 1
    printf "%.3f %.3f\n", a[i50]/1000, a[i99]/1000 }')
  echo "${r:--} $l50 $l99 ${bad:-0} ${non2xx:-0} ${proto:-none}"
}

# start NAME COMMAND...: run COMMAND in its own session, output to $work/NAME.out, its
# PID added to the caller's `pids` (stopped by `stop_all`).
# wait_port HOST:PORT NAME: wait up to 10 s for a listener, else print NAME's output and exit.
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

# stop_all: stop every process in the caller's `pids` (TERM, then KILL a moment later)
# and remove `$work`; the scripts run it on exit (`trap stop_all EXIT INT TERM`).
stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}

# need_tools HINT TOOL...: exit 2 naming the first TOOL not on PATH, with HINT (what to
# install).
need_tools() {
  local hint=$1 tool; shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found ($hint)" >&2; exit 2; }
  done
}
