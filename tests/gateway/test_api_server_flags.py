"""The launcher's command line: every documented flag with its default, fast failures that name the flag, and
the configuration the flags turn into (--dry-run)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.cli import build_parser, main
from paddlellm.model_info import CheckpointText

ROOT = Path(__file__).resolve().parents[2]
DESIGN_FLAGS = {
    "--host": "0.0.0.0",
    "--port": "8000",
    "--metrics-port": "the main port",
    "--workers": "1",
    "--api-key": "none",
    "--model": "SmolLM2-135M-Instruct",
    "--max-model-len": "2048",
    "--block-size": "64",
    "--use-warmup": "0",
    "--engine-worker-queue-port": "0",
    "--tensor-parallel-size": "1",
    "--max-num-seqs": "8",
    "--num-gpu-blocks-override": None,
    "--max-num-batched-tokens": "max_model_len",
    "--gpu-memory-utilization": "0.9",
    "--kv-cache-ratio": "0.75",
    "--enable-mm": None,
    "--scheduler-name": "local",
    "--scheduler-max-size": "-1",
    "--scheduler-ttl": "900",
    "--scheduler-host": None,
    "--scheduler-port": "6379",
    "--scheduler-db": "0",
    "--scheduler-password": None,
    "--scheduler-topic": None,
    "--scheduler-min-load-score": None,
    "--scheduler-load-shards-num": None,
}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    d = tmp_path / "my-model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_help_lists_every_flag_with_its_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.api_server", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flat = " ".join(out.split())
    for flag, default in DESIGN_FLAGS.items():
        assert flag in out, flag
        if default is not None:
            start = flat.index(f"{flag} ", flat.index("options:"))
            segment = flat[start : start + 400]
            assert "default:" in segment and default in segment[segment.index("default:") :], (flag, default)


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit, match="^2$") as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--max-num"], "unrecognized arguments"),  # no abbreviations
        (["--block-size", "x"], "--block-size: invalid int value"),
        (["--block-size", "0"], "--block-size: must be in [1, 4096]"),
        (["--kv-cache-ratio", "1.5"], "--kv-cache-ratio"),
        (["--tensor-parallel-size", "0"], "--tensor-parallel-size"),
        (["--max-model-len", "1"], "--max-model-len"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--scheduler-name", "global", "--scheduler-port", "0"], "--scheduler-port"),
        (["--scheduler-name", "global", "--scheduler-topic", "a b"], "--scheduler-topic"),
        (["--enable-mm"], "--enable-mm: my-model is not a checkpoint images can be served with"),
        (["--use-warmup", "2"], "--use-warmup: invalid choice"),
        (["--stream-interval", "-1"], "--stream-interval must be between 0 (auto) and 4096"),
    ],
)
def test_bad_flags_fail_fast_naming_the_flag(argv: list[str], needle: str, model: Path, capsys) -> None:
    assert needle in _error(["--model", str(model), "--dry-run", *argv], capsys)


def test_missing_model_fails_with_a_hint(tmp_path: Path, capsys) -> None:
    assert "no such file" in _error(["--model", str(tmp_path / "nope"), "--dry-run"], capsys)
    assert "no config.json" in _error(["--model", str(tmp_path), "--dry-run"], capsys)


def test_dry_run_maps_flags_to_engine_and_gateway_config(model: Path, capsys) -> None:
    argv = [
        "--model",
        str(model),
        "--dry-run",
        "--port",
        "8188",
        "--max-model-len",
        "512",
        "--block-size",
        "16",
        "--use-warmup",
        "1",
        "--max-num-seqs",
        "4",
        "--num-gpu-blocks-override",
        "100",
        "--max-num-batched-tokens",
        "128",
        "--kv-cache-ratio",
        "0.5",
        "--api-key",
        "k",
        "--workers",
        "3",
        "--scheduler-max-size",
        "10",
        "--scheduler-ttl",
        "60",
        "--metrics-port",
        "9100",
        "--stream-interval",
        "4",
    ]
    assert main(argv) == 0
    cfg = json.loads(capsys.readouterr().out)
    engine, gateway = cfg["engine"], cfg["gateway"]
    assert engine["model"] == str(model) and engine["served_model_name"] == "my-model"
    assert (engine["max_model_len"], engine["block_size"], engine["use_warmup"], engine["max_num_seqs"]) == (
        512,
        16,
        True,
        4,
    )
    assert (
        engine["num_gpu_blocks_override"],
        engine["max_num_batched_tokens"],
        engine["kv_cache_ratio"],
    ) == (100, 128, 0.5)
    assert (engine["scheduler_max_size"], engine["scheduler_ttl"]) == (10, 60.0)
    assert gateway["max_model_len"] == 512 and gateway["api_key"] == "***" and gateway["metrics_port"] == 9100
    assert gateway["stream_interval"] == 4
    assert (cfg["port"], cfg["workers"]) == (8188, 3)


def test_defaults_leave_optional_engine_values_unset(model: Path) -> None:
    args = build_parser().parse_args(["--model", str(model)])
    assert (args.num_gpu_blocks_override, args.max_num_batched_tokens, args.api_key) == (None, None, None)
    assert args.port == 8000 and args.scheduler_name == "local"


def test_boolean_flags_take_0_1_or_stand_alone(model: Path) -> None:
    """FastDeploy writes `--use-warmup 1`, vLLM `--enforce-eager`: both forms work, and the default stays."""
    parse = build_parser().parse_args
    assert parse(["--model", str(model), "--enforce-eager"]).enforce_eager == 1
    assert parse(["--model", str(model), "--enforce-eager", "0"]).enforce_eager == 0
    assert parse(["--model", str(model), "--enforce-eager", "1", "--use-warmup"]).use_warmup == 1
    assert parse(["--model", str(model)]).enforce_eager == 0
    # vLLM's negative form turns off an option that defaults to on.
    assert parse(["--model", str(model)]).enable_prefix_caching == 1
    assert parse(["--model", str(model), "--no-enable-prefix-caching"]).enable_prefix_caching == 0
    assert parse(["--model", str(model), "--enable-prefix-caching", "0"]).enable_prefix_caching == 0


def _template(tmp_path: Path, template: str) -> Path:
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return d


def _markers(model: Path) -> tuple[str, str, bool] | None:
    return CheckpointText.from_dir(str(model)).reasoning_markers()


def test_reasoning_markers_from_the_chat_template(tmp_path: Path) -> None:
    plain = "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    assert _markers(_template(tmp_path, plain)) is None
    qwen3 = (
        "{% for m in messages %}{{ m.content }}{% if '</think>' in m.content %}x{% endif %}{% endfor %}"
        "{%- if add_generation_prompt %}A:{%- if enable_thinking is false %}<think>\n\n</think>{%- endif %}"
        "{%- endif %}"
    )
    assert _markers(_template(tmp_path, qwen3)) == ("<think>", "</think>", False)
    r1 = "{{ '</think>' }}{% if add_generation_prompt %}{{ 'A:<think>\\n' }}{% endif %}"
    assert _markers(_template(tmp_path, r1)) == ("<think>", "</think>", True)


def test_sampling_defaults_from_generation_config(model: Path, capsys) -> None:
    (model / "generation_config.json").write_text(
        json.dumps({"temperature": 0.2, "top_p": 0.9, "eos_token_id": 2})
    )
    assert main(["--model", str(model), "--dry-run"]) == 0
    gateway = json.loads(capsys.readouterr().out)["gateway"]
    assert (gateway["default_temperature"], gateway["default_top_p"]) == (0.2, 0.9)


def test_global_scheduler_settings_reach_the_gateway(model: Path, capsys) -> None:
    argv = [
        "--model",
        str(model),
        "--dry-run",
        "--scheduler-name",
        "global",
        "--scheduler-host",
        "redis.local",
        "--scheduler-port",
        "6380",
        "--scheduler-password",
        "pw",
        "--scheduler-topic",
        "t1",
        "--workers",
        "3",
        "--max-num-seqs",
        "8",
    ]
    assert main(argv) == 0
    gateway = json.loads(capsys.readouterr().out)["gateway"]
    sched = gateway["global_scheduler"]
    assert (sched["host"], sched["port"], sched["topic"], sched["password"]) == (
        "redis.local",
        6380,
        "t1",
        "***",
    )
    assert gateway["scheduler_capacity"] == 3  # ceil(8 / 3): each worker is one instance over the engine


def test_unreachable_redis_fails_before_anything_starts(model: Path, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    err = _error(["--model", str(model), "--scheduler-name", "global", "--scheduler-port", str(port)], capsys)
    assert f"127.0.0.1:{port}" in err


def test_every_engine_option_is_in_help_and_in_the_rendered_repository(model: Path, tmp_path: Path) -> None:
    """One declaration per option (paddlellm/config.py): each EngineConfig field has a flag in --help and a
    parameter in the rendered llm_engine config.pbtxt, and a non-default value given as a flag arrives in the
    rendered parameter."""
    import dataclasses

    from launcher.cli import plan_from_args
    from launcher.render import render_model_repository
    from paddlellm.config import EngineConfig

    help_text = build_parser().format_help()
    fields = dataclasses.fields(EngineConfig)
    for f in fields:
        assert f"--{f.name.replace('_', '-')}" in help_text, f.name
    parser = build_parser()
    argv = ["--model", str(model), "--max-num-seqs", "5", "--dtype", "bfloat16", "--use-warmup", "1"]
    argv += ["--cpu-kernels", "avx2", "--seed", "7", "--scheduler-ttl", "12.5", "--instance-id", "abc"]
    plan = plan_from_args(parser.parse_args(argv), parser)
    repo = render_model_repository(ROOT / "model_repository", tmp_path / "repo", plan.engine.to_params())
    text = (repo / "llm_engine" / "config.pbtxt").read_text()
    for f in fields:
        assert f'key: "{f.name}"' in text, f.name
    params = dict(re.findall(r'key: "(\w+)" value: \{ string_value: "([^"]*)" \}', text))
    assert EngineConfig.from_params(params) == plan.engine
    assert (params["max_num_seqs"], params["dtype"], params["use_warmup"]) == ("5", "bfloat16", "1")
    assert (params["cpu_kernels"], params["seed"], params["scheduler_ttl"]) == ("avx2", "7", "12.5")
    assert params["instance_id"] == "abc"


def test_auth_and_limit_flags(model: Path, capsys) -> None:
    help_text = " ".join(build_parser().format_help().split())
    for flag, default in (
        ("--api-key-exempt-paths", "/health,/ready,/metrics"),
        ("--max-request-body-bytes", "16777216"),
        ("--max-messages", "2048"),
        ("--max-concurrent-streams", "0"),
        ("--max-n", "16"),
        ("--request-timeout", "none"),
    ):
        segment = help_text[help_text.index(f"{flag} ", help_text.index("options:")) :][:400]
        assert f"default: {default}" in segment, flag
    argv = ["--model", str(model), "--dry-run", "--api-key", "k"]
    argv += ["--api-key-exempt-paths", "/ready, /metrics"]
    argv += ["--max-request-body-bytes", "1024", "--max-messages", "16", "--max-concurrent-streams", "5"]
    argv += ["--workers", "2", "--request-timeout", "90", "--max-n", "4"]
    assert main(argv) == 0
    gateway = json.loads(capsys.readouterr().out)["gateway"]
    assert gateway["api_key_exempt_paths"] == ["/ready", "/metrics"]
    assert (gateway["max_request_body_bytes"], gateway["max_messages"]) == (1024, 16)
    assert gateway["max_concurrent_streams"] == 3  # ceil(5 / 2 workers): each worker counts its own
    assert gateway["request_timeout_s"] == 90.0
    assert gateway["max_n"] == 4
    assert main(["--model", str(model), "--dry-run", "--api-key-exempt-paths", ""]) == 0
    assert json.loads(capsys.readouterr().out)["gateway"]["api_key_exempt_paths"] == []
    defaults = json.loads(main(["--model", str(model), "--dry-run"]) == 0 and capsys.readouterr().out)
    assert defaults["gateway"]["request_timeout_s"] is None
    assert defaults["gateway"]["max_concurrent_streams"] == 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--api-key-exempt-paths", "health"], "--api-key-exempt-paths"),
        (["--max-request-body-bytes", "0"], "--max-request-body-bytes"),
        (["--max-messages", "0"], "--max-messages"),
        (["--max-concurrent-streams", "-1"], "--max-concurrent-streams must be >= 0"),
        (["--max-n", "0"], "--max-n must be >= 1"),
        (["--request-timeout", "0"], "--request-timeout must be > 0"),
        (["--request-timeout", "soon"], "--request-timeout: invalid float value"),
    ],
)
def test_bad_auth_and_limit_flags_name_the_flag(argv: list[str], needle: str, model: Path, capsys) -> None:
    assert needle in _error(["--model", str(model), "--dry-run", *argv], capsys)
