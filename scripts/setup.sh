#!/usr/bin/env bash
# Sets up a fresh machine for gan-augment: system packages, a virtual environment, the project and its extras.
# Idempotent: a second run only checks. Usage: scripts/setup.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
# The pins match the wheels this project is tested with; pyproject keeps torch loose (>=2.4) so any
# installed torch satisfies it. Override with TORCH_PACKAGES="torch torchvision" for the newest.
TORCH_PACKAGES=${TORCH_PACKAGES:-"torch==2.14.1 torchvision==0.29.1"}

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
# the dashboard's browser tests drive Debian's chromium through its chromedriver
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
# partition tests (tests/support/netns.py) drop packets between network namespaces with nftables
command -v nft >/dev/null || need_apt+=(nftables)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_apt[*]} with apt-get" >&2
    apt-get install -y -q "${need_apt[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${need_apt[@]}" >/dev/null; }
  else
    echo "setup: please install ${need_apt[*]} (e.g. sudo apt-get install -y ${need_apt[*]})" >&2
    exit 1
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing $TORCH_PACKAGES" >&2
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $TORCH_PACKAGES
fi
"$VENV/bin/pip" install -q -e ".[worker,test]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$VENV/bin/python" -c "import producer.cli, worker.model, webdataset" || { echo "setup: install failed" >&2; exit 1; }
echo "setup: ready ($VENV)" >&2
