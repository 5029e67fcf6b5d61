#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine (root): the Debian packages the lab
# uses, then the Python package with its pinned dependencies (pyproject.toml). Idempotent: packages
# already present are not fetched again. `--browser` (make test) adds Debian's Chromium and its
# ChromeDriver for the browser tests, so that no browser tool downloads a driver at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(openssh-server openssh-client iptables iproute2 procps psmisc util-linux kmod time sudo pciutils
  # the real-node lab (mlplat lab up --nodes real): containerd, runc and the CNI plugins on its hosts,
  # busybox, catatonit and dash for the images it builds (mlplat.lab.images)
  containerd runc containernetworking-plugins busybox-static catatonit dash)
if [ "${1:-}" = "--browser" ]; then
  APT_PACKAGES+=(chromium chromium-driver fonts-dejavu-core)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing Debian packages ${missing[*]}; install them as root" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
# Reinstall only when pyproject.toml changed since the last install (a stamp keyed by its hash), or
# when `import mlplat` does not load this checkout's lib/ (another clone's editable install).
stamp_dir=${MLPLAT_CACHE:-$HOME/.cache/mlplat}
mkdir -p "$stamp_dir"
want=$(sha256sum pyproject.toml | cut -c1-16)
stamp="$stamp_dir/pip-stamp-$(command -v "$PY" | sha256sum | cut -c1-8)"
here=$(cd lib/mlplat && pwd -P)
loaded=$(cd / && "$PY" -c "import os, mlplat; print(os.path.realpath(os.path.dirname(mlplat.__file__)))" 2>/dev/null || true)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want:$PWD" ] || [ "$loaded" != "$here" ]; then
  echo "bootstrap: pip install -e '.[test,train]'"
  "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test,train]'
  echo "$want:$PWD" > "$stamp"
fi
"$PY" -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
echo "bootstrap: ok"
