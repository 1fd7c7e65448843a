#!/usr/bin/env bash
# perf_analyzer (tritonclient 2.51's binary) against the `ensemble` model over gRPC streaming.
#
#   scripts/perf_analyzer.sh [--url HOST:PORT] [--concurrency "1 8 32"] [--requests-per-client N]
#                            [--input-data FILE] [--out DIR] [-- <extra launcher flags>]
#
# Without --url it starts the stack itself (python -m gateway.api_server on a free port with a run
# directory, default model, --max-num-seqs 32), reads Triton's gRPC address from <run-dir>/endpoints.json,
# and stops the launcher at the end. Each concurrency level is its own perf_analyzer run with a fixed
# request count (concurrency x --requests-per-client), so a level ends in bounded time instead of waiting
# for perf_analyzer's stability windows, which a shared 2-core machine rarely satisfies.
# Input data: scripts/perf_analyzer_inputs.json (chat messages, greedy, max_tokens 64, ignore_eos, so
# every request generates 64 tokens). Per-level CSV and profile exports land in --out.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
URL=""
LEVELS="1 8 32"
PER_CLIENT=2
OUT="$ROOT/benchmarks/results/perf_analyzer"
INPUTS="$ROOT/scripts/perf_analyzer_inputs.json"
LAUNCH_EXTRA=()

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --url) URL="$2"; shift 2 ;;
        --concurrency) LEVELS="$2"; shift 2 ;;
        --requests-per-client) PER_CLIENT="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --input-data) INPUTS="$(realpath "$2")"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; LAUNCH_EXTRA=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

# The wheel ships perf_analyzer as a console binary; it links libcudart.so.12 even on CPU, which the
# nvidia-cuda-runtime-cu12 wheel provides (the gateway extra, so scripts/setup.sh installs it), and Debian's
# libb64-0d.
PA="$VENV/bin/perf_analyzer"
[[ -x "$PA" ]] || { echo "perf_analyzer not found at $PA (pip install 'tritonclient[all]==2.51.*')" >&2; exit 1; }
CUDART="$("$PY" -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))' \
    2>/dev/null || true)"
[[ -n "$CUDART" && -e "$CUDART/libcudart.so.12" ]] || {
    echo "libcudart.so.12 missing: pip install nvidia-cuda-runtime-cu12 into $VENV" >&2; exit 1; }
export LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

mkdir -p "$OUT"
LAUNCHER_PID=""
RUN_DIR=""
cleanup() {
    if [[ -n "$LAUNCHER_PID" ]] && kill -0 "$LAUNCHER_PID" 2>/dev/null; then
        echo "[perf_analyzer.sh] stopping the launcher (pid $LAUNCHER_PID)"
        kill -TERM "$LAUNCHER_PID" 2>/dev/null || true
        wait "$LAUNCHER_PID" 2>/dev/null || true
    fi
    [[ -n "$RUN_DIR" ]] && rm -rf "$RUN_DIR"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "$URL" ]]; then
    RUN_DIR="$(mktemp -d -t paddlellm-pa-XXXXXX)"
    PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    echo "[perf_analyzer.sh] starting the stack (run dir $RUN_DIR, log $OUT/launcher.log)"
    (cd "$ROOT" && exec env PYTHONPATH="$ROOT" "$PY" -m gateway.api_server --host 127.0.0.1 --port "$PORT" \
        --run-dir "$RUN_DIR" --max-num-seqs 32 "${LAUNCH_EXTRA[@]}") >"$OUT/launcher.log" 2>&1 &
    LAUNCHER_PID=$!
    # endpoints.json appears once every model is READY; the gateway's health follows shortly after.
    for _ in $(seq 1 1800); do
        kill -0 "$LAUNCHER_PID" 2>/dev/null || { echo "launcher exited:" >&2; tail -20 "$OUT/launcher.log" >&2; exit 1; }
        grep -q "ready: OpenAI API" "$OUT/launcher.log" && break
        sleep 0.5
    done
    URL="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["triton_grpc"])' "$RUN_DIR/endpoints.json")"
    echo "[perf_analyzer.sh] Triton gRPC at $URL"
fi

echo "[perf_analyzer.sh] load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for c in $LEVELS; do
    n=$((c * PER_CLIENT))
    echo "[perf_analyzer.sh] concurrency $c, $n requests"
    # --streaming: the ensemble is decoupled, so requests go over the gRPC bidi stream and latency is
    # the time to the final response; --profile-export-file keeps every response's timestamp (TTFT,
    # inter-token gaps can be computed from it).
    "$PA" -m ensemble -u "$URL" -i grpc --streaming --async \
        --input-data "$INPUTS" \
        --concurrency-range "$c" --request-count "$n" \
        --measurement-mode count_windows --max-trials 1 --stability-percentage 999 \
        --percentile 50 \
        -f "$OUT/ensemble_c$c.csv" --profile-export-file "$OUT/ensemble_c$c.profile.json"
done
echo "[perf_analyzer.sh] load average: $(cut -d' ' -f1-3 /proc/loadavg)"
# perf_analyzer's own latency for a decoupled model is per request; TTFT, inter-response gaps and output
# tokens/s (completion_tokens of each request's last response / first send to last response) come from
# the profile exports.
"$PY" - "$OUT" $LEVELS <<'PYEOF'
import json, statistics, sys
out, levels = sys.argv[1], sys.argv[2:]
print("\n| concurrency | requests | TTFT p50 (ms) | TTFT p90 (ms) | ITL p50 (ms) | ITL p90 (ms) | output tok/s |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for c in levels:
    reqs = json.load(open(f"{out}/ensemble_c{c}.profile.json"))["experiments"][0]["requests"]
    ttft = sorted((r["response_timestamps"][0] - r["timestamp"]) / 1e6 for r in reqs)
    gaps = sorted((b - a) / 1e6 for r in reqs for a, b in zip(r["response_timestamps"], r["response_timestamps"][1:]))
    tokens = sum(r["response_outputs"][-1]["completion_tokens"] for r in reqs)
    wall = (max(r["response_timestamps"][-1] for r in reqs) - min(r["timestamp"] for r in reqs)) / 1e9
    q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))]
    print(f"| {c} | {len(reqs)} | {statistics.median(ttft):.0f} | {q(ttft, 0.9):.0f} | "
          f"{statistics.median(gaps):.1f} | {q(gaps, 0.9):.1f} | {tokens / wall:.1f} |")
PYEOF
echo "[perf_analyzer.sh] results in $OUT"
