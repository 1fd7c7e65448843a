"""The load-test scripts: they parse and print help, perf_analyzer's input file matches the ensemble's
contract, and bench_stack's statistics mean what its docstring says. No server is started here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paddlellm import protocol
from paddlellm.sampling import SamplingParams

REPO = Path(__file__).resolve().parents[2]
PA_SCRIPT = REPO / "scripts" / "perf_analyzer.sh"
PA_INPUTS = REPO / "scripts" / "perf_analyzer_inputs.json"
BENCH = REPO / "benchmarks" / "bench_stack.py"
LLM_TOOLS = REPO / "scripts" / "bench_llm_tools.sh"


def _bench_module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("bench_stack", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_stack"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


def test_perf_analyzer_script_parses_and_prints_help() -> None:
    subprocess.run(["bash", "-n", str(PA_SCRIPT)], check=True)
    assert os.access(PA_SCRIPT, os.X_OK)
    out = subprocess.run([str(PA_SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "--url" in out.stdout and "--concurrency" in out.stdout
    bad = subprocess.run([str(PA_SCRIPT), "--nope"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2


def test_perf_analyzer_script_uses_the_streaming_ensemble() -> None:
    text = PA_SCRIPT.read_text()
    for needle in ("-m ensemble", "-i grpc", "--streaming", "perf_analyzer_inputs.json", "endpoints.json"):
        assert needle in text, needle
    assert 'LEVELS="1 8 32"' in text


def test_perf_analyzer_inputs_match_the_ensemble_contract() -> None:
    data = json.loads(PA_INPUTS.read_text())["data"]
    assert data
    for entry in data:
        # Our convention's inputs, as the gateway sends them (the vLLM backend's are optional alternatives).
        ours = {protocol.PROMPT, protocol.MESSAGES, protocol.SAMPLING, protocol.RESUME_IDS}
        assert set(entry) == ours, f"ensemble inputs changed: {set(entry) ^ ours} ({PA_INPUTS.name})"
        for spec in (t for t in protocol.ENSEMBLE.inputs if t.name in ours):
            value = entry[spec.name]
            if spec.dtype == "TYPE_STRING":
                assert spec.dims == (1,)
                assert isinstance(value, list) and len(value) == 1 and isinstance(value[0], str)
            else:  # variable-length ids: explicit shape, so an empty tensor (shape [0]) is sent as such
                assert spec.dims == (-1,)
                assert value["shape"] == [len(value["content"])]
                assert all(isinstance(v, int) for v in value["content"])
        assert entry[protocol.PROMPT] == [""]  # chat: the prompt comes from the messages
        messages = json.loads(entry[protocol.MESSAGES][0])
        assert messages and all({"role", "content"} <= set(m) for m in messages)
        assert messages[-1]["role"] == "user"
        params = SamplingParams.from_dict(json.loads(entry[protocol.SAMPLING][0]))
        # Same number of tokens for every request: greedy, fixed length, EOS ignored.
        assert params.greedy and params.ignore_eos and params.max_tokens == 64


def test_bench_stack_help() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--url", "--concurrency", "--rounds", "--no-offline"):
        assert flag in out.stdout


def test_bench_stack_summary_definitions() -> None:
    bench = _bench_module()
    rec = bench.StreamRecord
    # Two streams decoding together: tokens at 0.1 s steps after a 0.5 s / 0.6 s first token.
    a = rec(sent=0.0, arrivals=[0.5, 0.6, 0.7, 0.8], tokens=[1, 1, 1, 1], ended=0.85, completion_tokens=4,
            prompt_tokens=30)
    b = rec(sent=0.0, arrivals=[0.6, 0.7, 0.8, 0.9], tokens=[1, 1, 1, 1], ended=1.0, completion_tokens=4,
            prompt_tokens=30)
    s = bench.summarize(2, [a, b], load_avg=1.5)
    assert s.requests == 2 and s.prompt_tokens == 30
    assert s.ttft_p50_ms == pytest.approx(550.0)
    assert s.itl_p50_ms == pytest.approx(100.0)
    assert s.output_tok_s == pytest.approx(8 / 1.0)
    # Window (0.6, 0.8]: a's 0.7 and 0.8, b's 0.7 and 0.8 -> 4 tokens in 0.2 s.
    assert s.batch_decode_tok_s == pytest.approx(20.0)
    assert s.tokens_per_chunk == pytest.approx(1.0)
    table = bench.table([bench.dataclasses.replace(s, offline_decode_tok_s=25.0)])
    assert "| 2 | 0 | 2 |" in table and "80%" in table and "32%" in table
    # A stream interval: 1 token, then chunks of 3 -> 7 tokens in 3 chunks.
    k = rec(sent=0.0, arrivals=[0.5, 0.8, 1.1], tokens=[1, 3, 3], ended=1.1, completion_tokens=7)
    assert bench.summarize(1, [k], load_avg=1.0).tokens_per_chunk == pytest.approx(7 / 3)


def test_wakeup_interference_help() -> None:
    script = REPO / "benchmarks" / "wakeup_interference.py"
    out = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert "--repeats" in out.stdout and "--batch" in out.stdout


def test_bench_stack_medians_pair_each_level() -> None:
    bench = _bench_module()
    rec = bench.StreamRecord(sent=0.0, arrivals=[0.1, 0.2, 0.3], tokens=[1, 1, 1], ended=0.3,
                             completion_tokens=3, prompt_tokens=5)
    base = bench.summarize(1, [rec], load_avg=1.0)
    runs = [
        bench.dataclasses.replace(base, repeat=0, offline_decode_tok_s=10.0, load_avg=1.0),
        bench.dataclasses.replace(base, repeat=1, offline_decode_tok_s=20.0, load_avg=3.0),
        bench.dataclasses.replace(base, concurrency=8, repeat=0, offline_decode_tok_s=40.0),
    ]
    med = bench.medians(runs)
    assert [m.concurrency for m in med] == [1, 8]
    assert med[0].offline_decode_tok_s == pytest.approx(15.0) and med[0].load_avg == pytest.approx(2.0)
    assert med[0].repeat == -1 and med[1].offline_decode_tok_s == pytest.approx(40.0)


def test_llm_tools_script_runs_the_tools_as_their_users_do(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(LLM_TOOLS)], check=True)
    assert os.access(LLM_TOOLS, os.X_OK)
    out = subprocess.run([str(LLM_TOOLS), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--concurrency" in out.stdout, out.stderr
    text = LLM_TOOLS.read_text()
    for needle in (
        "genai-perf profile -m ensemble --service-kind triton --backend vllm --streaming",
        "--endpoint-type chat",
        "tritonserver --model-repository",
        "--triton-url",
        ".triton/env",
    ):
        assert needle in text, needle
    report = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "llm_tools_report.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )
    assert report.returncode == 0 and report.stdout.startswith("| tool (target) |"), report.stderr
