#!/usr/bin/env bash
# Make tritonserver from the nvidia-pytriton wheel usable without Docker (see docs/triton-notes.md).
#
# Builds <repo>/.triton/backends/python (libtriton_python.so, triton_python_backend_utils.py and the
# triton_python_backend_stub built for the running Python), <repo>/.triton/bin/tritonserver (the wheel's
# binary with that --backend-directory) and writes <repo>/.triton/env, the exports (PATH with both bin
# directories, TRITONSERVER, TRITON_BACKEND_DIR, LD_LIBRARY_PATH, PYTHONPATH) that launch it:
#   source .triton/env && tritonserver --model-repository model_repository      (docs/triton.md)
# Idempotent: files are copied only when they differ. The logic lives in launcher/tritonenv.py, which the
# launcher also uses.
# Python: $PYTHON, else <repo>/.venv/bin/python, else python3.
#
# Usage: scripts/setup_triton.sh [--check]    (--check also runs tritonserver --help with that env)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$repo/.venv/bin/python" ]]; then
    py="$repo/.venv/bin/python"
else
    py="$(command -v python3)"
fi

env_file="$repo/.triton/env"
exports="$(cd "$repo" && "$py" -m launcher.tritonenv setup --backend-root "$repo/.triton/backends")"
if [[ ! -f "$env_file" ]] || [[ "$(cat "$env_file")" != "$exports" ]]; then
    printf '%s\n' "$exports" >"$env_file"
    echo "wrote $env_file" >&2
fi
echo "$exports"

if [[ "${1:-}" == "--check" ]]; then
    # shellcheck disable=SC1090
    source "$env_file"
    # --help exits 1 by design; check that the binary loaded its libraries and printed usage.
    usage="$("$TRITONSERVER" --help 2>&1 || true)"
    if [[ "$usage" != "Usage: tritonserver"* ]]; then
        echo "error: $TRITONSERVER does not run (missing shared libraries?)" >&2
        exit 1
    fi
    if ldd "$TRITON_BACKEND_DIR/python/triton_python_backend_stub" | grep 'not found'; then
        echo "error: the stub has unresolved libraries" >&2
        exit 1
    fi
    echo "ok: tritonserver runs and the stub's libraries resolve" >&2
fi
