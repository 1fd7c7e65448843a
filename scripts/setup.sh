#!/usr/bin/env bash
# Set up everything on a fresh Debian machine with Python 3.11: system packages, a .venv at the repo root,
# the project with its engine and gateway dependencies, Triton's CPU backend directory and the default model.
# Usage: scripts/setup.sh [--dev]   (--dev adds the test dependencies: pytest, torch CPU, transformers, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

need_apt=()
for pkg in libb64-0d redis-server unzip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# gcc builds the engine's CPU kernels, one library per ISA (paddlellm/native); without it Paddle's ops are used.
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
if [ "${1:-}" = "--dev" ]; then
  # Tests: qemu-user runs the engine on an emulated AVX2-only CPU (tests/emulated: SIGILL on any AVX-512
  # instruction); objdump (binutils) reads the avx2 kernel library's instructions.
  command -v qemu-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-user)
  command -v objdump >/dev/null 2>&1 || need_apt+=(binutils)
fi
# libpython3.11.so: the Triton python backend stub embeds the interpreter.
LIBDIR=$(python3 -c 'import sysconfig;print(sysconfig.get_config_var("LIBDIR"))')
if ! ls "$LIBDIR"/libpython3.11*.so* >/dev/null 2>&1; then need_apt+=(libpython3.11); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
PIP=".venv/bin/pip"
$PIP install -q --upgrade pip
$PIP install -q -e ".[engine,gateway]"
if [ "${1:-}" = "--dev" ]; then
  # torch is the parity reference only: take the CPU build (a local wheel where the machine has one).
  TORCH_WHL=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n1 || true)
  $PIP install -q "${TORCH_WHL:-torch==2.13.0}"
  $PIP install -q -e ".[engine,gateway,dev]"
fi
bash scripts/setup_triton.sh
bash scripts/setup_default_model.sh
.venv/bin/python -m paddlellm.native.build
echo "[setup] done: $ROOT/.venv"
