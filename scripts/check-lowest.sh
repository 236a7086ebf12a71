#!/usr/bin/env bash
# Checks pyproject.toml's lower bounds: a venv with every dependency at the version its ">=" names
# (and what those need, resolved as usual), then the test subset below against this checkout.
# Downloads a few hundred MiB on its first run, so neither .ci/run nor scripts/test.sh calls it.
#   bash scripts/check-lowest.sh [pytest arguments: other tests instead of the subset]
# The venv is .venv-lowest in the checkout (not /tmp: the --generate tests refuse a /tmp
# install, which systemd's PrivateTmp hides). uv installs when it is on PATH (seconds), else pip.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv=.venv-lowest
python=${PYTHON:-python3}

# name==lowest for each ">=" of [project] dependencies and the "fast" extra (uvloop), extras dropped
# (a constraint cannot carry them) and environment markers kept.
lows=$("$python" - <<'EOF'
import re
import sys

try:
    import tomllib
except ImportError:
    sys.exit("check-lowest: reading pyproject.toml needs Python 3.11+: PYTHON=python3.11 bash scripts/check-lowest.sh")

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in project["dependencies"] + project["optional-dependencies"]["fast"]:
    spec, _, marker = req.partition(";")
    m = re.match(r"\s*([A-Za-z0-9._-]+)(\[[^]]*\])?\s*(.*)", spec)
    low = re.search(r">=\s*([^,\s]+)", m[3])
    if low:
        print(f"{m[1]}=={low[1]}" + (f"; {marker.strip()}" if marker.strip() else ""))
EOF
)
tests=(tests/runtime/test_cli_tcp.py tests/runtime/test_http_proto.py tests/runtime/test_http_rfc.py
       tests/runtime/test_metrics.py tests/runtime/test_proxy_outbound.py tests/runtime/test_dial_names.py
       tests/runtime/test_generate.py tests/runtime/test_letsencrypt_issuer.py tests/runtime/test_auto_tls_cli.py
       tests/provisioner/test_prov_cli.py tests/provisioner/test_prov_cli_output.py
       tests/provisioner/test_prov_local.py tests/provisioner/test_prov_ssh_install.py tests/provisioner/test_prov_ssh_keys.py
       tests/provisioner/test_prov_ssh_connect.py tests/provisioner/test_prov_templates.py
       tests/provisioner/test_prov_digitalocean.py tests/provisioner/test_prov_clouds_linode.py
       tests/provisioner/test_prov_clouds_hetzner.py tests/provisioner/test_prov_clouds_scaleway.py)
[ $# -gt 0 ] && tests=("$@")

echo "check-lowest: a fresh $venv with the lower bounds:" $(echo "$lows" | cut -d';' -f1)
rm -rf "$venv"
constraints=$(mktemp --suffix=-lowest.txt)
trap 'rm -f "$constraints"' EXIT
printf '%s\n' "$lows" > "$constraints"
# The test tools: what the subset imports, nothing of the cloud SDKs' test servers (moto, ...).
tools=(pytest pytest-timeout h11 hypothesis)
if command -v uv >/dev/null; then
  uv venv -q --seed -p "$python" "$venv"
  uv pip install -q --python "$venv/bin/python" -c "$constraints" -e '.[fast]' "${tools[@]}"
else
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q -c "$constraints" -e '.[fast]' "${tools[@]}"
fi
# Each bound must be what was installed: a constraint another package's needs overrode would test nothing.
"$venv/bin/python" - "$constraints" <<'EOF'
import sys
from importlib import metadata

def same(a: str, b: str) -> bool:
    """43 and 43.0.0 are one version."""
    def parts(v: str) -> list[str]:
        out = v.split(".")
        while len(out) > 1 and out[-1] == "0":
            out.pop()
        return out
    return parts(a) == parts(b)


wrong = []
for line in open(sys.argv[1]):
    name, _, want = line.split(";")[0].strip().partition("==")
    try:
        got = metadata.version(name)
    except metadata.PackageNotFoundError:
        continue  # a marker left it out on this platform
    if not same(got, want):
        wrong.append(f"{name} {got} (bound {want})")
if wrong:
    sys.exit("check-lowest: installed above the lower bound: " + ", ".join(wrong))
EOF
"$venv/bin/inlets" tcp server --help >/dev/null
"$venv/bin/inletsctl" create --help >/dev/null
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}"
