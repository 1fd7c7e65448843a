#!/usr/bin/env bash
# Triton's LLM benchmark tools, run as their users run them, against the default model:
#   genai-perf profile -m ensemble --service-kind triton --backend vllm --streaming   (tritonserver, gRPC)
#   aiperf profile --endpoint-type chat --streaming                                   (the gateway, HTTP)
#
#   scripts/bench_llm_tools.sh [--concurrency "1 8"] [--isl 48] [--osl 64] [--requests-per-client 4]
#                              [--measurement-interval 8000] [--out DIR] [--only genai-perf|aiperf]
#
# The stack is the Triton-native one: `tritonserver --model-repository model_repository` (the committed
# repository, no rendering) in the environment set-up writes (.triton/env), and the gateway alone in front of
# it (`python -m gateway.api_server --triton-url ...`), all on free loopback ports, stopped at the end.
# Both tools get synthetic prompts of --isl tokens (counted with the model's own tokenizer) and ask for
# exactly --osl output tokens, greedy, as benchmarks/bench_stack.py does (genai-perf: max_tokens = min_tokens
# and temperature 0 in sampling_parameters; aiperf: max_completion_tokens, ignore_eos, temperature 0, the
# server's token counts, few worker processes: the 2-core machine runs the engine too). The tools live in
# their own venvs under .bench/ (their numpy,
# pydantic and tritonclient pins clash with the engine's): genai-perf 0.0.8 is the release that goes with
# Triton 24.10 (tritonserver 2.51 and the perf_analyzer we ship) and still has --service-kind triton.
# Reports (each tool's own CSV/JSON exports) land in --out/<tool>/c<N>; benchmarks/llm_tools_report.py
# prints their TTFT / inter-token latency / throughput tables (docs/triton.md shows them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
MODEL="$ROOT/.models/SmolLM2-135M-Instruct"
LEVELS="1 8"
ISL=48
OSL=64
PER_CLIENT=4
INTERVAL_MS=8000
OUT="$ROOT/benchmarks/results/llm_tools"
ONLY=""
GENAI_PERF_VERSION="0.0.8"
AIPERF_VERSION="0.13.0"

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --concurrency) LEVELS="$2"; shift 2 ;;
        --isl) ISL="$2"; shift 2 ;;
        --osl) OSL="$2"; shift 2 ;;
        --requests-per-client) PER_CLIENT="$2"; shift 2 ;;
        --measurement-interval) INTERVAL_MS="$2"; shift 2 ;;
        --out) OUT="$(realpath -m "$2")"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ -f "$ROOT/.triton/env" && -d "$MODEL" ]] || { echo "run scripts/setup.sh first" >&2; exit 1; }

tool_venv() {  # tool_venv NAME VERSION -> the venv's bin dir, created once
    local venv="$ROOT/.bench/$1-venv" base
    if [[ "$("$venv/bin/pip" show "$1" 2>/dev/null | sed -n 's/^Version: //p')" != "$2" ]]; then
        echo "[bench] installing $1==$2 into $venv" >&2
        base="$(sed -n 's/^home = //p' "$ROOT/.venv/pyvenv.cfg")/python3"  # the venv's own interpreter
        [[ -x "$venv/bin/pip" ]] || "$base" -m venv "$venv"
        "$venv/bin/pip" install -q "$1==$2" >&2
    fi
    echo "$venv/bin"
}

read -r GRPC HTTP METRICS API < <("$PY" -c 'from paddlellm.ports import free_ports; print(*free_ports(4))')
RUN="$(mktemp -d -t bench-llm-tools-XXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    echo "[bench] stopped; logs in $RUN" >&2
}
trap cleanup EXIT

echo "[bench] tritonserver on the committed model_repository (grpc $GRPC); log $RUN/tritonserver.log" >&2
setsid bash -c "source '$ROOT/.triton/env' && exec tritonserver --model-repository '$ROOT/model_repository' \
    --grpc-port $GRPC --http-port $HTTP --metrics-port $METRICS" >"$RUN/tritonserver.log" 2>&1 &
PIDS+=($!)
echo "[bench] the gateway alone on 127.0.0.1:$API; log $RUN/gateway.log" >&2
setsid "$PY" -m gateway.api_server --triton-url "127.0.0.1:$GRPC" --triton-metrics-url \
    "http://127.0.0.1:$METRICS/metrics" --host 127.0.0.1 --port "$API" --run-dir "$RUN/gateway" \
    >"$RUN/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do
    grep -q "\[launcher\] ready" "$RUN/gateway.log" 2>/dev/null && break
    kill -0 "${PIDS[1]}" 2>/dev/null || { tail -20 "$RUN/gateway.log" >&2; exit 1; }
    sleep 1
done
grep -q "\[launcher\] ready" "$RUN/gateway.log" || { echo "the stack did not get ready" >&2; exit 1; }
NAME="$(curl -s "http://127.0.0.1:$API/v1/models" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')"
echo "[bench] serving $NAME; machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# perf_analyzer (which genai-perf drives) is tritonclient's binary in the project venv; it links libcudart.
CUDART="$("$PY" -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))')"

# Greedy, exactly --osl tokens, as bench_stack.py asks. genai-perf's vLLM converter writes only max_tokens
# and min_tokens into sampling_parameters (vLLM's default temperature 1 would add sampling work per token);
# its --extra-inputs (JSON form) replaces the whole tensor.
GREEDY_VLLM="{\\\"max_tokens\\\": $OSL, \\\"min_tokens\\\": $OSL, \\\"temperature\\\": 0}"
mkdir -p "$OUT"
export COLUMNS=160  # the tools' tables, untruncated in the kept .txt reports
for c in $LEVELS; do
    if [[ -z "$ONLY" || "$ONLY" == "genai-perf" ]]; then
        bin="$(tool_venv genai-perf "$GENAI_PERF_VERSION")"
        echo "[bench] genai-perf, concurrency $c" >&2
        (cd "$RUN" && PATH="$bin:$ROOT/.venv/bin:$PATH" LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
            genai-perf profile -m ensemble --service-kind triton --backend vllm --streaming \
            -u "127.0.0.1:$GRPC" --tokenizer "$MODEL" --concurrency "$c" \
            --synthetic-input-tokens-mean "$ISL" --synthetic-input-tokens-stddev 0 \
            --output-tokens-mean "$OSL" --output-tokens-stddev 0 --output-tokens-mean-deterministic \
            --num-prompts 100 --random-seed 1 --measurement-interval "$INTERVAL_MS" \
            --extra-inputs "{\"sampling_parameters\": \"$GREEDY_VLLM\"}" \
            --server-metrics-url "http://127.0.0.1:$METRICS/metrics" \
            --artifact-dir "$OUT/genai-perf/c$c") | tee "$OUT/genai-perf-c$c.txt"
    fi
    if [[ -z "$ONLY" || "$ONLY" == "aiperf" ]]; then
        bin="$(tool_venv aiperf "$AIPERF_VERSION")"
        echo "[bench] aiperf, concurrency $c" >&2
        (cd "$RUN" && "$bin/aiperf" profile -m "$NAME" --url "http://127.0.0.1:$API" --endpoint-type chat \
            --streaming --tokenizer "$MODEL" --concurrency "$c" --request-count $((c * PER_CLIENT)) \
            --warmup-request-count "$c" --isl "$ISL" --isl-stddev 0 --osl "$OSL" --osl-stddev 0 \
            --extra-inputs ignore_eos:true --extra-inputs temperature:0 --use-server-token-count \
            --workers-max 2 --record-processor-service-count 1 --no-server-metrics --no-gpu-telemetry \
            --random-seed 1 --ui-type none \
            --artifact-dir "$OUT/aiperf/c$c") | tee "$OUT/aiperf-c$c.txt"
    fi
done
"$PY" "$ROOT/benchmarks/llm_tools_report.py" "$OUT"
