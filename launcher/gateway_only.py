"""The gateway alone, in front of a tritonserver someone else runs (`--triton-url HOST:PORT`).

For deployments where Triton is its own process or container (`tritonserver --model-repository
model_repository`, Triton's NGC image, a Kubernetes pod with a Triton container and a gateway container):
no rendering and no tritonserver here, only the gateway's uvicorn workers (and the metrics server with a
separate `--metrics-port`), with the same settings, health checks, metrics and error envelopes as under the
full launcher, because they are the same processes started the same way (`Launcher`'s gateway half).

What the gateway must agree on with the engine is read from the server, not repeated on our command line:
`max_model_len` and the served model name (its `served_model_name`, else the checkpoint's name) come from
`llm_engine`'s config.pbtxt parameters, asked over gRPC once the model is loaded. Engine flags would
configure nothing here, so a changed one fails. Supervision: the gateway dying ends the command (exit 1) for
the orchestrator to restart; Triton's own health is the orchestrator's business (and `/health` reports it).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

from launcher.supervisor import Launcher, LaunchError, LaunchPlan
from paddlellm.config import EngineConfig
from paddlellm.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EngineFacts:
    """What the gateway takes from the running engine's configuration."""

    served_model_name: str
    max_model_len: int
    enable_mm: bool = False  # image parts accepted, and how many per request (its limit_mm_per_prompt)
    image_limit: int = 0

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> EngineFacts:
        """From `get_model_config(llm_engine, as_json=True)["config"]`: its string parameters."""
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        try:
            max_model_len = int(params["max_model_len"])
        except (KeyError, ValueError):
            raise LaunchError(
                "the server's llm_engine has no usable max_model_len parameter: "
                f"{params.get('max_model_len')!r}"
            ) from None
        model = params.get("model", "").rstrip("/")
        name = params.get("served_model_name") or (
            Path(model).stem if model.endswith(".gguf") else Path(model).name
        )
        if not name:
            raise LaunchError("the server's llm_engine names no model (parameter 'model' is empty)")
        mm_keys = ("enable_mm", "limit_mm_per_prompt")
        try:  # absent in a repository from before them: no images
            mm = EngineConfig.from_params({k: params[k] for k in mm_keys if k in params})
        except ConfigError as e:
            raise LaunchError(f"the server's llm_engine: {e}") from None
        return cls(name, max_model_len, mm.enable_mm, mm.image_limit if mm.enable_mm else 0)


def fetch_engine_facts(
    triton_url: str, engine_model: str, timeout_s: float, stop: threading.Event
) -> EngineFacts:
    """Wait (up to `timeout_s`, or until `stop` is set) for `engine_model` to be ready; read its config."""
    from tritonclient.grpc import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    client = InferenceServerClient(triton_url)
    deadline = time.monotonic() + timeout_s
    last = "not reachable"
    try:
        while not stop.is_set():
            try:
                if client.is_model_ready(engine_model, client_timeout=2.0):
                    config = client.get_model_config(engine_model, as_json=True, client_timeout=5.0)
                    return EngineFacts.from_model_config(config["config"])
                last = f"model '{engine_model}' not ready"
            except InferenceServerException as e:
                last = str(e).splitlines()[0]
            if time.monotonic() > deadline:
                raise LaunchError(f"tritonserver at {triton_url}: {last} after {timeout_s:g}s")
            stop.wait(1.0)
    finally:
        client.close()
    raise LaunchError("stopped before tritonserver was ready")


class GatewayOnly(Launcher):
    """`Launcher` without tritonserver: the gateway workers against `triton_url`."""

    def __init__(
        self, plan: LaunchPlan, triton_url: str, triton_metrics_url: str | None, served_model_name: str | None
    ) -> None:
        """`served_model_name`: the --served-model-name given, else None (the engine's name applies)."""
        super().__init__(plan)
        self.triton_url = triton_url
        self.triton_metrics_url = triton_metrics_url
        self.served_model_name = served_model_name

    def _start(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        plan = self.plan
        self.say(f"gateway only: waiting for '{plan.gateway.engine_model}' on tritonserver {self.triton_url}")
        facts = fetch_engine_facts(
            self.triton_url, plan.gateway.engine_model, plan.ready_timeout_s, self.stop_requested
        )
        settings = dataclasses.replace(
            plan.gateway,
            triton_url=self.triton_url,
            triton_metrics_url=self.triton_metrics_url,
            served_model_name=self.served_model_name or facts.served_model_name,
            max_model_len=facts.max_model_len,
            enable_mm=facts.enable_mm,
            limit_mm_per_prompt=facts.image_limit,
        )
        self.say(f"serving '{settings.served_model_name}' (max_model_len {settings.max_model_len})")
        self.plan = dataclasses.replace(plan, gateway=settings)
        env = self._gateway_env(run_dir, self._write_settings(run_dir, settings))
        self._start_gateway(run_dir, env)
        if settings.metrics_port is not None:
            self._start_metrics_server(settings.metrics_port, env, run_dir)
        self._wait_gateway()

    def _supervise(self) -> int:
        while not self.stop_requested.wait(0.5):
            for proc in (self.gateway, self.metrics_server):
                if proc is not None and not proc.alive():
                    self.say(f"{proc.name} exited unexpectedly (code {proc.proc.returncode}); shutting down")
                    return 1
        return 0
