"""`python -m launcher` (= `python -m gateway.api_server`): serve a model behind the OpenAI API (tritonserver
+ gateway).

Flags follow FastDeploy's api_server (names, meanings and defaults; README "Flags" lists them). Parsing
happens in `main()` only; bad or unknown flags fail before anything starts, naming the flag. Flags whose
feature has not landed fail with "not supported yet" rather than being ignored.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any

from gateway.global_scheduler.scheduler_settings import GlobalSchedulerSettings
from gateway.settings import TOOL_PARSERS, GatewaySettings
from launcher.supervisor import Launcher, LaunchPlan
from launcher.tritonenv import REPO_ROOT
from paddlellm.config import ENGINE_GROUP, SCHEDULER_GROUP, EngineConfig
from paddlellm.errors import CheckpointError, ConfigError
from paddlellm.model_info import CheckpointText, ModelInfo

DEFAULT_MODEL = REPO_ROOT / ".models" / "SmolLM2-135M-Instruct"


def _help(name: str) -> str:
    return next(info.help for f, _, info in EngineConfig.options() if f.name == name)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show the default unless the help text already says it (or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return super()._get_help_string(action) or text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway.api_server",
        description="Serve a model with an OpenAI-compatible API: tritonserver (tokenizer -> llm_engine -> "
        "detokenizer ensemble) behind a FastAPI gateway.",
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default="0.0.0.0", help="address of the OpenAI HTTP server")
    g.add_argument("--port", type=int, default=8000, help="port of the OpenAI HTTP server")
    g.add_argument(
        "--metrics-port", type=int, default=None, help="port of Prometheus /metrics (default: the main port)"
    )
    g.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the gateway")
    g.add_argument(
        "--api-key", default=None, help="bearer token clients must send (default: none, no authentication)"
    )
    g.add_argument(
        "--api-key-exempt-paths",
        default=",".join(GatewaySettings.api_key_exempt_paths),
        help="comma-separated paths that need no API key (exact matches; an empty value exempts none)",
    )
    limits = p.add_argument_group("request limits")
    limits.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=GatewaySettings.max_request_body_bytes,
        help="larger request bodies get a 413 before they are parsed",
    )
    limits.add_argument(
        "--max-messages",
        type=int,
        default=GatewaySettings.max_messages,
        help="chat requests with more messages get a 400",
    )
    limits.add_argument(
        "--max-concurrent-streams",
        type=int,
        default=GatewaySettings.max_concurrent_streams,
        help="generation requests (streamed or not) the gateway serves at once, split evenly over --workers; "
        "more get a 429 with Retry-After; 0: no limit (the engine queues them)",
    )
    limits.add_argument(
        "--max-n",
        type=int,
        default=GatewaySettings.max_n,
        help="largest n (choices per request) accepted; each choice is its own engine request",
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        help="seconds a generation request may take from its arrival, queueing included; then the engine "
        "aborts it and the client gets a 504 (default: none)",
    )
    tools = p.add_argument_group("tool calling")
    tools.add_argument(
        "--tool-call-parser",
        choices=TOOL_PARSERS,
        default=None,
        help="how the model writes tool calls, so answers are parsed into tool_calls and forced calls are "
        "constrained: hermes (<tool_call>{...}</tool_call>: Qwen2.5/Qwen3/Hermes), llama3_json (Llama 3.1 "
        "JSON calls), generic (a JSON answer, for templates without tool support) (default: from the chat "
        "template: hermes if it writes <tool_call>, llama3_json for Llama 3.1's format, else generic)",
    )
    tools.add_argument(
        "--enable-auto-tool-choice",
        action=argparse.BooleanOptionalAction,
        default=True,
        help='serve tool_choice "auto" (OpenAI\'s default when tools are given); '
        "--no-enable-auto-tool-choice refuses it with a 400",
    )
    g.add_argument("--served-model-name", default=None, help=_help("served_model_name"))
    g.add_argument(
        "--stream-interval",
        type=int,
        default=GatewaySettings.stream_interval,
        help="tokens per streamed chunk after the first, unless a request sets "
        "max_streaming_response_tokens; 0 = auto: one token per chunk while the serving path has room, "
        "more per chunk when the engine's token rate would make it the bottleneck (docs/serving-perf.md); "
        "k > 0: always k, which wakes the serving path less often per token at the price of k-token bursts",
    )
    g.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="directory for the rendered model repository, settings and logs "
        "(default: a temporary one, removed at a clean exit)",
    )
    g.add_argument(
        "--model-repository",
        type=Path,
        default=REPO_ROOT / "model_repository",
        help="the model repository to serve; a copy of it gets these flags' values",
    )
    g.add_argument(
        "--triton-url",
        default=None,
        metavar="HOST:PORT",
        help="serve only the gateway, against this running tritonserver's gRPC endpoint (e.g. one started "
        "with tritonserver --model-repository model_repository): nothing is rendered or started; the "
        "engine's max_model_len and model name are read from its llm_engine, so engine flags are refused "
        "(default: start tritonserver here)",
    )
    g.add_argument(
        "--triton-metrics-url",
        default=None,
        metavar="URL",
        help="with --triton-url: that tritonserver's Prometheus endpoint (e.g. http://host:8002/metrics), "
        "whose engine metrics /metrics then includes (default: none)",
    )
    g.add_argument(
        "--ready-timeout", type=float, default=900.0, help="seconds to wait for the models to load"
    )
    g.add_argument(
        "--max-engine-restarts",
        type=int,
        default=5,
        help="restarts of a dead engine (tritonserver, the llm_engine stub or a rank worker) within "
        "--engine-restart-window before the launcher exits with code 3 (a crash loop); 0: never restart",
    )
    g.add_argument(
        "--engine-restart-window", type=float, default=600.0, help="seconds --max-engine-restarts counts over"
    )
    g.add_argument(
        "--engine-step-timeout",
        type=float,
        default=120.0,
        help="seconds an engine with requests in flight may go without finishing a step before the launcher "
        "calls it wedged and restarts it (a deadlock, a rank stuck in a collective); raise it for big models "
        "whose prefill chunk (--max-num-batched-tokens) takes longer on a CPU; 0: not watched",
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the flags, print the engine and gateway configuration, and exit",
    )
    m = p.add_argument_group(ENGINE_GROUP)
    m.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=_help("model"))
    m.add_argument(
        "--allowed-media-domains",
        default="",
        help="with --enable-mm: comma-separated hosts whose http(s) image URLs the gateway fetches (exact "
        "names; '*': any host; vLLM's flag, closed by default here); other image URLs get a 400 and clients "
        "send data: URLs (default: none)",
    )
    s = p.add_argument_group(SCHEDULER_GROUP)
    s.add_argument(
        "--scheduler-name",
        choices=("local", "global"),
        default="local",
        help="local: one instance; global: instances share work through Redis",
    )
    add_engine_options({ENGINE_GROUP: m, SCHEDULER_GROUP: s})
    for flag, default, text in GlobalSchedulerSettings.flags():
        s.add_argument(flag, type=type(default) if default is not None else str, default=default, help=text)
    return p


def add_engine_options(groups: dict[str, Any]) -> None:
    """One flag per EngineConfig option the CLI does not define itself, generated from its declaration:
    `--max-num-seqs` for `max_num_seqs`, the field's type, default, choices and help. Booleans take 0/1 as
    FastDeploy's flags do, or stand alone for 1 as vLLM's do (`--enforce-eager`), and have vLLM's negative
    form for 0 (`--no-enable-prefix-caching`). An `unset` option defaults to None, which means the field's
    own default."""
    for f, typ, info in EngineConfig.options():
        if not info.cli:
            continue
        kwargs: dict[str, Any] = {"help": info.help, "default": f.default, "dest": f.name}
        if typ is bool:
            kwargs |= {
                "type": int,
                "choices": (0, 1),
                "nargs": "?",
                "const": 1,
                "default": int(f.default),
                "help": "1 (or the flag alone): " + info.help,
            }
        elif info.choices:
            kwargs["choices"] = info.choices
        else:
            kwargs["type"] = typ
        if info.unset is not None:
            kwargs |= {"default": None, "help": f"{kwargs['help']} (default: {info.unset})"}
        flag = "--" + f.name.replace("_", "-")
        groups[info.group].add_argument(flag, **kwargs)
        if typ is bool:
            groups[info.group].add_argument(
                "--no-" + flag[2:], dest=f.name, action="store_const", const=0, help=f"the same as {flag} 0"
            )


def engine_values(args: argparse.Namespace) -> dict[str, Any]:
    """The EngineConfig keyword arguments the generated flags carry (unset ones left to the field)."""
    values = {}
    for f, typ, info in EngineConfig.options():
        value = getattr(args, f.name, None) if info.cli else None
        if value is not None:
            values[f.name] = bool(value) if typ is bool else value
    return values


def _fail(parser: argparse.ArgumentParser, msg: str) -> None:
    parser.error(msg)  # prints usage + message, exits 2


def checkpoint_text(model: Path) -> CheckpointText | None:
    """The chat template's thinking markers and the sampling defaults come from here (None for a .gguf,
    whose facts the engine reads when it converts the file)."""
    return CheckpointText.from_dir(str(model)) if model.is_dir() else None


def _global_scheduler(args: argparse.Namespace) -> dict[str, Any]:
    """GatewaySettings fields for --scheduler-name global (ConfigError names the bad --scheduler-* flag)."""
    if args.scheduler_name != "global":
        return {}
    scheduler = GlobalSchedulerSettings.from_namespace(args)
    # Each uvicorn worker is one scheduler instance over the shared engine: split the engine's batch.
    capacity = max(1, -(-args.max_num_seqs // args.workers))
    return {"global_scheduler": scheduler, "scheduler_capacity": capacity}


def check_scheduler_reachable(plan: LaunchPlan) -> str | None:
    """Why the global scheduler's Redis cannot be used (None: it can), checked before anything starts."""
    if plan.gateway.global_scheduler is None:
        return None
    import asyncio

    from gateway.global_scheduler import SchedulerUnavailable
    from gateway.global_scheduler.store import check_reachable

    try:
        asyncio.run(check_reachable(plan.gateway.global_scheduler))
    except SchedulerUnavailable as e:
        return str(e)
    return None


def check_enable_mm(engine: EngineConfig, model: Path) -> str | None:
    """Why --enable-mm cannot serve `model` (None: it can, or the flag is off)."""
    if not engine.enable_mm:
        return None
    if not model.is_dir():
        return f"--enable-mm: {model} is a text-only checkpoint (images need a vision-language model)"
    try:
        info = ModelInfo.from_dir(str(model), engine.max_model_len)
    except (CheckpointError, ConfigError) as e:  # UnsupportedModel is a ConfigError
        return f"--enable-mm: {model.name} is not a checkpoint images can be served with: {e}"
    if info.vision is None:
        return (
            f"--enable-mm: {model.name} ({info.architecture}) is a text-only checkpoint; images need a "
            "vision-language model (Qwen2_5_VLForConditionalGeneration)"
        )
    return None


def plan_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> LaunchPlan:
    for flag, value, low in (
        ("--port", args.port, 1),
        ("--workers", args.workers, 1),
        ("--max-concurrent-streams", args.max_concurrent_streams, 0),
        ("--max-n", args.max_n, 1),
        ("--max-engine-restarts", args.max_engine_restarts, 0),
        ("--engine-restart-window", args.engine_restart_window, 0),
        ("--engine-step-timeout", args.engine_step_timeout, 0),
    ):
        if value < low:
            _fail(parser, f"{flag} must be >= {low}, got {value}")
    if args.request_timeout is not None and not args.request_timeout > 0:
        _fail(parser, f"--request-timeout must be > 0 seconds, got {args.request_timeout}")
    if args.port > 65535 or (args.metrics_port is not None and not 1 <= args.metrics_port <= 65535):
        _fail(parser, "--port/--metrics-port must be a port number")
    model: Path = args.model.expanduser().resolve()
    # The gateway alone reads only chat facts (sampling defaults, thinking markers) from a local checkpoint.
    if not model.exists() and not (args.triton_url and args.model == DEFAULT_MODEL):
        hint = " (run scripts/setup_default_model.sh to convert it)" if args.model == DEFAULT_MODEL else ""
        _fail(parser, f"--model {model}: no such file or directory{hint}")
    if model.is_dir() and not (model / "config.json").exists():
        _fail(parser, f"--model {model}: not an HF-layout checkpoint (no config.json)")
    if model.is_file() and model.suffix != ".gguf":
        _fail(parser, f"--model {model}: a file must be a .gguf checkpoint")
    served = args.served_model_name or (model.stem if model.is_file() else model.name)
    try:
        engine = EngineConfig(
            **engine_values(args),
            model=str(model),
            served_model_name=served,
        )
        if not engine.instance_id:  # instances on one host must never share IPC names
            engine = engine.replace(instance_id=uuid.uuid4().hex[:8])
        if not args.triton_url and (why := check_enable_mm(engine, model)) is not None:
            _fail(parser, why)
        domains = tuple(d.strip() for d in args.allowed_media_domains.split(",") if d.strip())
        if domains and not engine.enable_mm and not args.triton_url:  # gateway only: the engine's says
            _fail(parser, "--allowed-media-domains: needs --enable-mm (image URLs are refused without it)")
        text = checkpoint_text(model)
        markers = text.reasoning_markers() if text else None
        gateway = GatewaySettings(
            served_model_name=served,
            max_model_len=args.max_model_len,
            api_key=args.api_key,
            api_key_exempt_paths=tuple(p.strip() for p in args.api_key_exempt_paths.split(",") if p.strip()),
            max_request_body_bytes=args.max_request_body_bytes,
            max_messages=args.max_messages,
            # Each uvicorn worker counts its own requests: split the limit (as the scheduler capacity is).
            max_concurrent_streams=-(-args.max_concurrent_streams // args.workers),
            request_timeout_s=args.request_timeout,
            max_n=args.max_n,
            reasoning_start=markers[0] if markers else None,
            reasoning_end=markers[1] if markers else None,
            reasoning_starts_inside=markers[2] if markers else False,
            **(text.sampling_defaults() if text else {}),
            metrics_port=args.metrics_port if args.metrics_port not in (None, args.port) else None,
            stream_interval=args.stream_interval,
            tool_call_parser=args.tool_call_parser or (text.tool_format() if text else "generic"),
            enable_auto_tool_choice=args.enable_auto_tool_choice,
            enable_mm=engine.enable_mm,
            limit_mm_per_prompt=engine.image_limit,
            allowed_media_domains=domains,
            **_global_scheduler(args),
        )
    except CheckpointError as e:
        _fail(parser, f"--model {model}: {e}")
        raise  # unreachable: parser.error exits
    except ConfigError as e:
        # "config 'block_size': ..." -> name the flag the user typed.
        _fail(
            parser,
            re.sub(r"(?:config|gateway) '([a-z_]+)'", lambda m: "--" + m.group(1).replace("_", "-"), str(e)),
        )
        raise  # unreachable: parser.error exits
    return LaunchPlan(
        engine=engine,
        gateway=gateway,
        host=args.host,
        port=args.port,
        workers=args.workers,
        run_dir=args.run_dir,
        template_dir=args.model_repository.resolve(),
        ready_timeout_s=args.ready_timeout,
        max_restarts=args.max_engine_restarts,
        restart_window_s=args.engine_restart_window,
        step_timeout_s=args.engine_step_timeout,
    )


def _describe(plan: LaunchPlan) -> dict[str, Any]:
    import dataclasses

    gateway = dataclasses.asdict(plan.gateway)
    if gateway.get("api_key"):
        gateway["api_key"] = "***"
    if (gateway.get("global_scheduler") or {}).get("password"):
        gateway["global_scheduler"]["password"] = "***"
    return {
        "engine": dataclasses.asdict(plan.engine),
        "gateway": gateway,
        "host": plan.host,
        "port": plan.port,
        "workers": plan.workers,
        "run_dir": str(plan.run_dir) if plan.run_dir else None,
        "max_engine_restarts": plan.max_restarts,
        "engine_restart_window_s": plan.restart_window_s,
        "engine_step_timeout_s": plan.step_timeout_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = plan_from_args(args, parser)
    if args.triton_url:
        defaults = {f.name: f.default for f, _, _ in EngineConfig.options()}
        changed = sorted(k for k, v in engine_values(args).items() if v != defaults[k])
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            parser.error(
                f"{flags}: engine flags configure nothing with --triton-url (edit that server's "
                "llm_engine config.pbtxt instead)"
            )
    if args.dry_run:
        print(json.dumps(_describe(plan), indent=2))
        return 0
    problem = check_scheduler_reachable(plan)
    if problem is not None:
        parser.error(problem)
    if args.triton_url:
        from launcher.gateway_only import GatewayOnly

        return GatewayOnly(plan, args.triton_url, args.triton_metrics_url, args.served_model_name).run()
    return Launcher(plan).run()


if __name__ == "__main__":
    sys.exit(main())
