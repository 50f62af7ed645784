#!/usr/bin/env bash
# Set up jaxens from nothing and run one job. Usage:
#   bash bootstrap.sh demo   # install, then train a 4-member MLP ensemble on MNIST-1D (~1 min on 2 cores)
#   bash bootstrap.sh test   # install, then run the default test suite (slow tests deselected)
#   bash bootstrap.sh lint   # install, then ruff (lint and format check) and mypy on the library
# Works on a fresh Debian machine as root: installs python3-venv and dataset-fashion-mnist when missing,
# creates ./.venv and installs the pinned package there. Extra arguments go to pytest / jaxens.train.
set -euo pipefail
cd "$(dirname "$0")"

job="${1:-}"
case "$job" in
  demo|test|lint) shift ;;
  *) echo "usage: bash bootstrap.sh {demo|test|lint} [extra args]" >&2; exit 2 ;;
esac

FMNIST_DIR=/usr/share/datasets/fashion-mnist
VENV="${JAXENS_VENV:-.venv}"

apt_packages=()
if ! python3 -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  apt_packages+=(python3 python3-venv)
fi
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  apt_packages+=(dataset-fashion-mnist)
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: apt-get install ${apt_packages[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${apt_packages[@]}"
fi

# Reinstall only when pyproject.toml changed since the last install into this venv.
stamp="$VENV/.jaxens-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi

case "$job" in
  demo)
    workdir="${JAXENS_DEMO_WORKDIR:-runs/mnist1d_ensemble-$(date +%Y%m%d-%H%M%S)}"
    exec "$VENV/bin/python" -m jaxens.train --config=configs/mnist1d_ensemble.py --workdir="$workdir" "$@"
    ;;
  lint)
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    exec "$VENV/bin/mypy" "$@"
    ;;
  test)
    exec "$VENV/bin/python" -m pytest -q -n auto -m "not slow" "$@"
    ;;
esac
