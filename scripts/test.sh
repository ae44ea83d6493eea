#!/usr/bin/env bash
# The test suite, on a fresh machine: installs what the tests need (the moto server
# from PyPI), then runs every test of the workspace. .ci/run runs this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Never let an AWS SDK reach for instance metadata; tests pass their own dummy values too.
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test} AWS_EC2_METADATA_DISABLED=true

if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
  echo "test: installing moto[server] (the ECS API peer for the discovery tests)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi
if ! command -v chromium >/dev/null; then
  # The dashboard test drives real headless Chromium.
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "test: installing chromium (the dashboard test runs it headless)..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "test: chromium is missing; install it (apt-get install chromium) for the dashboard test" >&2
  fi
fi
if [[ ! -x ../shared/tools/moto-loopback && -z "${MOTO_ENDPOINT:-}" ]]; then
  echo "test: ../shared/tools/moto-loopback is missing; set MOTO_ENDPOINT to a running moto server" >&2
  exit 2
fi

exec cargo test --workspace -j2 "$@"
