"""GatewaySettings: the one typed configuration of a gateway process.

The launcher builds it from its flags and hands it to uvicorn workers through a JSON file named by the
environment variable below (workers re-import the app factory, so nothing can be passed in memory).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.global_scheduler.scheduler_settings import GlobalSchedulerSettings
from paddlellm.errors import ConfigError, InvalidRequest
from paddlellm.protocol.data_url import MAX_IMAGE_BYTES
from paddlellm.sampling import MAX_STREAM_INTERVAL, SPECS

# gateway.tool_calls.PARSERS (repeated here: the settings module stays free of the parsers' imports).
TOOL_PARSERS = ("hermes", "llama3_json", "generic")
DEFAULT_MAX_N = 16  # choices per request; each is an engine request, so this bounds one request's share

# The only environment variable the gateway reads: the path of a settings JSON file (see `from_env`).
SETTINGS_ENV = "PADDLELLM_GATEWAY_SETTINGS"


@dataclass(frozen=True)
class GatewaySettings:
    triton_url: str = "127.0.0.1:8001"
    """Triton's gRPC endpoint (host:port)."""
    served_model_name: str = "default"
    """The model name /v1/models reports; requests may also say "default"."""
    max_model_len: int = 2048
    """Longest prompt + output; max_tokens above it is rejected before Triton is asked."""
    api_key: str | None = field(default=None, repr=False)  # never in a repr, so never in a log line
    """When set, every route but `api_key_exempt_paths` requires `Authorization: Bearer <api_key>`."""
    api_key_exempt_paths: tuple[str, ...] = ("/health", "/ready", "/metrics")
    """Exact paths that need no API key: health checks and scrapers usually cannot send one."""
    ensemble_model: str = "ensemble"
    engine_model: str = "llm_engine"
    """Triton model names: the ensemble serves requests, the engine is what /health probes."""
    request_timeout_s: float | None = None
    """Deadline of one generation request from its arrival (queueing included); on expiry the engine is told
    to abort it and the client gets a 504. None: no deadline (max_tokens and max_model_len bound it)."""
    max_request_body_bytes: int = 16 * 2**20
    """Larger request bodies get a 413 before they are parsed (parsing costs several times the body)."""
    max_messages: int = 2048
    """Chat requests with more messages get a 400 before the chat template is rendered (OpenAI's limit)."""
    max_concurrent_streams: int = 0
    """Generation requests this process serves at once; more get a 429 with Retry-After. 0: no limit (the
    engine queues them, bounded by --scheduler-max-size)."""
    health_timeout_s: float = 10.0
    health_probe: bool = True
    """/health also runs a one-token request through the engine, so a dead engine loop shows."""
    health_cache_s: float = 1.0
    """A passing probe is trusted for this long, so frequent health checks add no load."""
    reasoning_start: str | None = None
    reasoning_end: str | None = None
    """Thinking markers of the model's chat template (e.g. <think>, </think>); None: no reasoning split."""
    reasoning_starts_inside: bool = False
    """The template's generation prompt already opens the thinking block."""
    default_temperature: float | None = None
    default_top_p: float | None = None
    """Used when a request gives none: the checkpoint's generation_config.json (None: OpenAI's 1.0)."""
    triton_metrics_url: str | None = None
    """Triton's Prometheus endpoint (engine metrics live there); the launcher fills it in."""
    launcher_metrics_path: str | None = None
    """A Prometheus text file the launcher keeps (its restart counter), appended to /metrics; None: none."""
    global_scheduler: GlobalSchedulerSettings | None = None
    """With --scheduler-name global (each uvicorn worker joins the topic as its own instance); None:
    requests go straight to the local ensemble."""
    scheduler_capacity: int = 0
    """With the global scheduler: requests one worker runs at once (its share of --max-num-seqs)."""
    metrics_port: int | None = None
    """Where the metrics server listens; None or the main port: /metrics on the gateway app (issue 6)."""
    max_n: int = DEFAULT_MAX_N
    """Largest `n` (choices per request) accepted; each choice is its own engine request."""
    tool_call_parser: str = "generic"
    """How tool calls are written in answers and parsed out of them (gateway.tool_calls.PARSERS); the launcher
    picks it from the chat template unless --tool-call-parser says."""
    enable_auto_tool_choice: bool = True
    """tool_choice "auto" (OpenAI's default with tools) is served; False: a 400 asking for another choice."""
    stream_interval: int = 0
    """Tokens per streamed chunk after the first, for requests without max_streaming_response_tokens; 0:
    auto (the engine sends per token while the serving path has room and coalesces under load)."""
    enable_mm: bool = False
    """Image content parts are accepted (--enable-mm, a vision-language checkpoint); False: a 400 naming the
    part. The tokenizer model decodes them; the gateway checks their form and count first."""
    limit_mm_per_prompt: int = 4
    """Most images per request (--limit-mm-per-prompt's image count)."""
    allowed_media_domains: tuple[str, ...] = ()
    """Hosts whose http(s) image URLs the gateway fetches (exact host names; "*": any); empty: such URLs get a
    400 and clients send data: URLs (vLLM's --allowed-media-domains, closed by default here)."""
    media_fetch_timeout_s: float = 5.0
    """Deadline of one image fetch (connect to last byte)."""
    max_image_bytes: int = MAX_IMAGE_BYTES
    """Largest encoded image, as a data URL's payload or a fetched file."""

    def __post_init__(self) -> None:
        if self.max_model_len < 2:
            raise ConfigError(f"gateway 'max_model_len' must be >= 2 (got {self.max_model_len})")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ConfigError(f"gateway 'request_timeout_s' must be > 0 (got {self.request_timeout_s})")
        if not self.health_timeout_s > 0:
            raise ConfigError(f"gateway 'health_timeout_s' must be > 0 (got {self.health_timeout_s})")
        for name in ("max_request_body_bytes", "max_messages"):
            if getattr(self, name) < 1:
                raise ConfigError(f"gateway '{name}' must be >= 1 (got {getattr(self, name)})")
        if self.max_concurrent_streams < 0:
            raise ConfigError(
                f"gateway 'max_concurrent_streams' must be >= 0 (got {self.max_concurrent_streams})"
            )
        # JSON has no tuples: a settings file brings a list.
        object.__setattr__(self, "api_key_exempt_paths", tuple(self.api_key_exempt_paths))
        for path in self.api_key_exempt_paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(f"gateway 'api_key_exempt_paths': {path!r} is not a path starting with '/'")
        if self.health_cache_s < 0:
            raise ConfigError(f"gateway 'health_cache_s' must be >= 0 (got {self.health_cache_s})")
        if (self.reasoning_start is None) != (self.reasoning_end is None):
            raise ConfigError("gateway 'reasoning_start' and 'reasoning_end' must be set together")
        for name, param in (("default_temperature", "temperature"), ("default_top_p", "top_p")):
            value = getattr(self, name)
            try:  # the sampling parameter's own declaration (paddlellm.sampling.SPECS) states the range
                SPECS[param].check(name, value if value is None else float(value))
            except InvalidRequest as e:
                raise ConfigError(f"gateway {e.message}") from None
        if self.max_n < 1:
            raise ConfigError(f"gateway 'max_n' must be >= 1 (got {self.max_n})")
        if not 0 <= self.stream_interval <= MAX_STREAM_INTERVAL:
            raise ConfigError(
                f"gateway 'stream_interval' must be between 0 (auto) and {MAX_STREAM_INTERVAL} "
                f"(got {self.stream_interval})"
            )
        if self.tool_call_parser not in TOOL_PARSERS:
            raise ConfigError(
                f"gateway 'tool_call_parser' must be one of {', '.join(TOOL_PARSERS)} "
                f"(got {self.tool_call_parser!r})"
            )
        if not self.served_model_name:
            raise ConfigError("gateway 'served_model_name' must not be empty")
        object.__setattr__(self, "allowed_media_domains", tuple(self.allowed_media_domains))
        if self.limit_mm_per_prompt < 0:
            raise ConfigError(f"gateway 'limit_mm_per_prompt' must be >= 0 (got {self.limit_mm_per_prompt})")
        if not self.media_fetch_timeout_s > 0 or self.max_image_bytes < 1:
            raise ConfigError("gateway 'media_fetch_timeout_s' and 'max_image_bytes' must be > 0")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: Any) -> GatewaySettings:
        if not isinstance(data, dict):
            raise ConfigError("gateway settings must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown gateway setting(s): {', '.join(unknown)}")
        try:
            scheduler = data.get("global_scheduler")
            if isinstance(scheduler, dict):
                data = data | {"global_scheduler": GlobalSchedulerSettings(**scheduler)}
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"bad gateway settings: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> GatewaySettings:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read gateway settings {path}: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_env(cls) -> GatewaySettings:
        path = os.environ.get(SETTINGS_ENV)
        if not path:
            raise ConfigError(
                f"{SETTINGS_ENV} is not set: start the gateway with python -m gateway.api_server"
            )
        return cls.from_file(path)
