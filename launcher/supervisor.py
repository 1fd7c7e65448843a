"""Start and supervise the serving stack: tritonserver, then the gateway's uvicorn workers.

Sequence: render the model repository into the run directory -> start tritonserver on free loopback ports
-> wait until every model is READY (printing each state change and warmup lines from the engine) -> write
the gateway settings file -> start uvicorn with `--workers` processes on `gateway.app:app_from_env` -> wait
for the gateway's /health -> supervise. SIGINT/SIGTERM, or either child exiting, stops both: the gateway
first (no new requests), then tritonserver; a child that does not exit in time is killed with its whole
process group (python backend stubs, rank workers), so nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gateway.gateway_metrics import MULTIPROC_ENV
from gateway.settings import SETTINGS_ENV, GatewaySettings
from launcher.process import ManagedProcess
from launcher.render import render_model_repository
from launcher.restart_counter import RestartCounter
from launcher.tritonenv import REPO_ROOT, TritonInstall, locate
from launcher.watchdog import StepWatchdog
from paddlellm.config import EngineConfig
from paddlellm.cpu import read_cpu
from paddlellm.ports import free_ports
from paddlellm.worker.shm_allreduce import segment_prefix

MODELS = ("tokenizer", "llm_engine", "detokenizer", "ensemble")
# tritonserver output worth showing on the console (the rest goes to the log file only): warmup progress,
# the engine's own log lines and errors, minus the ones that are harmless on a CPU-only machine.
_ECHO = re.compile(r"warm|^E\d{4} |^error|paddlellm\b", re.IGNORECASE)
_HARMLESS = re.compile(r"CudaDriverHelper|NVML|DCGM|CUDA driver|pinned (system )?memory|cuda", re.IGNORECASE)


class LaunchError(RuntimeError):
    """Start-up failed; the message says why (and where the log is)."""


class GatewayCrashed(LaunchError):
    """The gateway died by a signal before it answered /health."""


@dataclass(frozen=True)
class LaunchPlan:
    engine: EngineConfig
    gateway: GatewaySettings  # triton_url is filled in once ports are chosen
    host: str
    port: int
    workers: int
    run_dir: Path | None  # None: a fresh temporary directory, removed at exit
    template_dir: Path = REPO_ROOT / "model_repository"
    ready_timeout_s: float = 900.0
    triton_args: tuple[str, ...] = field(default_factory=tuple)
    max_restarts: int = 5  # engine restarts within restart_window_s before the launcher gives up (exit 3)
    restart_window_s: float = 600.0
    step_timeout_s: float = 120.0  # a busy engine finishing no step for this long is wedged; 0: not watched


EXIT_CRASH_LOOP = 3  # the engine kept dying: an orchestrator should restart (or alert), not wait


def _worth_echoing(line: str) -> bool:
    return bool(_ECHO.search(line)) and not _HARMLESS.search(line) and not line.startswith(("|", "+"))


_LOADING = re.compile(r'"loading: ([\w-]+):\d+"')
_LOADED = re.compile(r"\"successfully loaded '([\w-]+)'\"")


def _triton_env(install: TritonInstall) -> dict[str, str]:
    env = install.launch_env()
    # What MKL needs on this CPU (AMD: its AVX2 kernels; Intel: nothing), in tritonserver's environment so
    # the engine's stub has it before paddle loads; the engine also applies it itself (worker/cpu_tuning.py).
    for key, value in read_cpu().mkl_env().items():
        env.setdefault(key, value)
    return env


class Launcher:
    def __init__(self, plan: LaunchPlan, install: TritonInstall | None = None) -> None:
        self.plan = plan
        self.install = install
        self.stop_requested = threading.Event()
        self.triton: ManagedProcess | None = None
        self.gateway: ManagedProcess | None = None
        self.metrics_server: ManagedProcess | None = None  # only with a separate --metrics-port
        self._t0 = time.monotonic()
        self._triton_start: tuple[Path, Path, tuple[int, int, int]] | None = None  # repo, run dir, ports
        self._engine_pids: list[int] = []  # the llm_engine stub and its rank workers, once ready
        self._stub_pids: set[int] = set()  # the stubs among them (the rest are rank workers)
        self.restart_counter: RestartCounter | None = None
        self.watchdog: StepWatchdog | None = None
        self._shm_regions: set[str] = set()  # the python backend stubs' shared memory (/dev/shm names)
        self._shm_since: float | None = None  # wall clock: the first tritonserver start
        self.restarts: list[tuple[float, str]] = []  # (monotonic time, cause) of each engine restart

    def say(self, msg: str) -> None:
        print(f"[launcher] {msg}", flush=True)

    def run(self) -> int:
        """Serve until a signal or a child's death; returns the exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        own_dir = self.plan.run_dir is None
        run_dir = self.plan.run_dir or Path(tempfile.mkdtemp(prefix="paddlellm-run-"))
        code = 0
        try:
            self._start(run_dir)
            if not self.stop_requested.is_set():
                code = self._supervise()
        except LaunchError as e:
            self.say(f"error: {e}")
            code = 1
        finally:
            self._shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)
            if own_dir and code == 0:
                shutil.rmtree(run_dir, ignore_errors=True)
            elif own_dir:
                self.say(f"logs kept in {run_dir}")
        return code

    def _triton_line(self, line: str) -> None:
        """Progress from tritonserver's log: model loads (its gRPC port answers only once all are loaded),
        warmup and error lines."""
        if m := _LOADING.search(line):
            self.say(f"model {m.group(1)}: loading at {time.monotonic() - self._t0:.1f}s")
        elif m := _LOADED.search(line):
            self.say(f"model {m.group(1)}: loaded at {time.monotonic() - self._t0:.1f}s")
        elif _worth_echoing(line):
            print(f"[tritonserver] {line.rstrip()}", flush=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.stop_requested.is_set():
            self.say(f"{signal.Signals(signum).name}: shutting down")
        self.stop_requested.set()

    # ------------------------------------------------------------------ start-up
    def _start(self, run_dir: Path) -> None:
        """Render -> tritonserver -> models ready -> gateway settings -> gateway workers -> healthy."""
        run_dir.mkdir(parents=True, exist_ok=True)
        repo = self._render(run_dir)
        grpc_port, http_port, metrics_port = free_ports(3)
        self._triton_start = (repo, run_dir, (grpc_port, http_port, metrics_port))
        self.restart_counter = RestartCounter(run_dir / "launcher.prom")
        if self.plan.step_timeout_s > 0:
            self.watchdog = StepWatchdog(f"http://127.0.0.1:{metrics_port}/metrics", self.plan.step_timeout_s)
        self._start_triton(repo, run_dir, grpc_port, http_port, metrics_port)
        self._wait_models(f"127.0.0.1:{grpc_port}")
        if self.stop_requested.is_set():
            return
        self._engine_pids = self._find_engine_pids()
        self.say(f"watching the engine's processes: {self._engine_pids}")
        settings = dataclasses.replace(
            self.plan.gateway,
            triton_url=f"127.0.0.1:{grpc_port}",
            triton_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            launcher_metrics_path=str(self.restart_counter.path),
        )
        env = self._gateway_env(run_dir, self._write_settings(run_dir, settings))
        self._write_endpoints(run_dir, settings, http_port)
        self._start_gateway(run_dir, env)
        if settings.metrics_port is not None:
            self._start_metrics_server(settings.metrics_port, env, run_dir)
        try:
            self._wait_gateway()
        except GatewayCrashed as exc:
            # Seen once under heavy load: gRPC's C core aborted in its poller (ev_epoll1_linux.cc
            # "wakeup_fd_->Wakeup().ok()") while the gateway was starting. A crash by a signal before the
            # first healthy answer gets one more start; a second one, or an exit with a code, is final.
            self.say(f"the gateway crashed during start-up ({exc}); starting it once more")
            self._start_gateway(run_dir, env)
            self._wait_gateway()

    def _render(self, run_dir: Path) -> Path:
        repo = run_dir / "model_repository"
        self.say(f"rendering the model repository into {repo}")
        # The tokenizer describes tools in the format the gateway parses (one resolved value for both).
        params = {**self.plan.engine.to_params(), "tool_call_parser": self.plan.gateway.tool_call_parser}
        return render_model_repository(self.plan.template_dir, repo, params)

    def _start_triton(self, repo: Path, run_dir: Path, *ports: int) -> None:
        grpc_port, http_port, metrics_port = ports
        install = self.install or locate()
        argv = install.command(
            repo,
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            f"--metrics-port={metrics_port}",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
            *self.plan.triton_args,
        )
        self.say(
            f"starting tritonserver (grpc {grpc_port}, http {http_port}, metrics {metrics_port}); "
            f"log: {run_dir / 'tritonserver.log'}"
        )
        self._t0 = time.monotonic()
        if self._shm_since is None:
            self._shm_since = time.time() - 1.0  # ctime granularity
        self.triton = ManagedProcess(
            "tritonserver", argv, _triton_env(install), run_dir / "tritonserver.log", self._triton_line
        )

    @staticmethod
    def _write_settings(run_dir: Path, settings: GatewaySettings) -> Path:
        path = run_dir / "gateway.json"
        path.touch(mode=0o600)  # it may hold the API key and the Redis password
        path.write_text(settings.to_json(), encoding="utf-8")
        return path

    def _write_endpoints(self, run_dir: Path, settings: GatewaySettings, http_port: int) -> None:
        """For tools that talk to Triton directly (perf_analyzer, benchmarks, tests of engine metrics)."""
        endpoints = {
            "triton_grpc": settings.triton_url,
            "triton_http": f"127.0.0.1:{http_port}",
            "triton_metrics": settings.triton_metrics_url,
            "openai": f"http://{self.plan.host}:{self.plan.port}/v1",
            "launcher_pid": os.getpid(),
        }
        (run_dir / "endpoints.json").write_text(json.dumps(endpoints, indent=1), encoding="utf-8")

    @staticmethod
    def _gateway_env(run_dir: Path, settings_path: Path) -> dict[str, str]:
        env = dict(os.environ)
        env[SETTINGS_ENV] = str(settings_path)
        # Gateway metrics from every uvicorn worker are summed through files here (gateway_metrics.py).
        prom_dir = run_dir / "prometheus"
        shutil.rmtree(prom_dir, ignore_errors=True)
        prom_dir.mkdir()
        env[MULTIPROC_ENV] = str(prom_dir)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return env

    def _start_gateway(self, run_dir: Path, env: dict[str, str]) -> None:
        plan = self.plan
        self.say(f"starting the gateway ({plan.workers} worker(s)) on http://{plan.host}:{plan.port}")
        extra = ["--timeout-graceful-shutdown", "5"]
        self.gateway = self._uvicorn("gateway", "gateway.app:app_from_env", plan.port, plan.workers, extra,
                                     env, run_dir)

    def _start_metrics_server(self, port: int, env: dict[str, str], run_dir: Path) -> None:
        """/metrics on its own port: one small process reading the same settings and metrics directory."""
        self.say(f"starting the metrics server on http://{self.plan.host}:{port}/metrics")
        factory = "gateway.gateway_metrics:metrics_app_from_env"
        self.metrics_server = self._uvicorn("metrics", factory, port, 1, [], env, run_dir)

    def _uvicorn(
        self, name: str, factory: str, port: int, workers: int, extra: list[str], env: dict[str, str],
        run_dir: Path,
    ) -> ManagedProcess:
        """uvicorn serving the app `factory` builds, logging to <run_dir>/<name>.log and `[name]` lines."""
        argv = [sys.executable, "-m", "uvicorn", factory, "--factory", "--host", self.plan.host]
        argv += ["--port", str(port), "--workers", str(workers), "--log-level", "warning", *extra]
        return ManagedProcess(
            name,
            argv,
            env,
            run_dir / f"{name}.log",
            lambda line: print(f"[{name}] {line.rstrip()}", flush=True),
            cwd=REPO_ROOT,
        )

    def _wait_models(self, grpc_url: str) -> None:
        from tritonclient.grpc import InferenceServerClient
        from tritonclient.utils import InferenceServerException

        assert self.triton is not None
        start = self._t0
        seen: dict[str, str] = {}
        client = InferenceServerClient(grpc_url)
        try:
            while not self.stop_requested.is_set():
                if not self.triton.alive():
                    tail = "\n".join(self.triton.tail)
                    raise LaunchError(
                        f"tritonserver exited with code {self.triton.proc.returncode} before its "
                        f"models were ready; last lines:\n{tail}"
                    )
                if time.monotonic() - start > self.plan.ready_timeout_s:
                    raise LaunchError(f"models not ready after {self.plan.ready_timeout_s:g}s: {seen}")
                try:
                    index = client.get_model_repository_index(as_json=True, client_timeout=2.0)
                    for m in index.get("models", []):
                        state = m.get("state", "UNKNOWN")
                        if seen.get(m["name"]) != state:
                            seen[m["name"]] = state
                            reason = f" ({m['reason']})" if m.get("reason") else ""
                            self.say(f"model {m['name']}: {state}{reason} at {time.monotonic() - start:.1f}s")
                    if all(seen.get(n) == "READY" for n in MODELS) and client.is_server_ready(
                        client_timeout=2.0
                    ):
                        self.say(f"all models ready in {time.monotonic() - start:.1f}s")
                        return
                except InferenceServerException:
                    pass  # not listening yet
                self.stop_requested.wait(0.5)
        finally:
            client.close()

    def _wait_gateway(self) -> None:
        assert self.gateway is not None
        host = "127.0.0.1" if self.plan.host in ("0.0.0.0", "::", "") else self.plan.host
        url = f"http://{host}:{self.plan.port}/health"
        deadline = time.monotonic() + 120
        while not self.stop_requested.is_set():
            if not self.gateway.alive():
                code = self.gateway.proc.returncode
                message = f"the gateway exited with code {code}; last lines:\n" + "\n".join(self.gateway.tail)
                raise (GatewayCrashed if code is not None and code < 0 else LaunchError)(message)
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    if r.status == 200:
                        self.say(
                            f"ready: OpenAI API at http://{self.plan.host}:{self.plan.port}/v1 "
                            f"(model '{self.plan.gateway.served_model_name}' or 'default')"
                        )
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise LaunchError(f"the gateway did not become healthy at {url}")
            self.stop_requested.wait(0.3)

    # ------------------------------------------------------------------ supervision and shutdown
    def _supervise(self) -> int:
        """Every 0.5 s: a dead gateway ends the launcher (exit 1: its state is per-connection, an orchestrator
        restarts the whole unit); a dead tritonserver, llm_engine stub or rank worker restarts tritonserver,
        up to `max_restarts` times in `restart_window_s` (then exit 3, naming the cause); so does an engine
        that is busy but finishes no step for `step_timeout_s` (checked each second: launcher/watchdog.py)."""
        tick = 0
        while not self.stop_requested.wait(0.5):
            tick += 1
            for proc in (self.gateway, self.metrics_server):
                if proc is not None and not proc.alive():
                    self.say(f"{proc.name} exited unexpectedly (code {proc.proc.returncode}); shutting down")
                    return 1
            failure = self._engine_failure()
            if failure is None and self.watchdog is not None and tick % 2 == 0:
                wedged = self.watchdog.check(time.monotonic())
                failure = None if wedged is None else ("engine_wedged", wedged)
            if failure is not None:
                code = self._recover(*failure)
                if code is not None:
                    return code
        return 0

    def _recover(self, kind: str, cause: str) -> int | None:
        """Restart tritonserver until the engine is back (None) or the restart budget is spent (the exit
        code). A restart that fails (the engine died again while loading, or its model no longer loads) counts
        as one more death. Each restart is counted by `kind` (restart_counter.CAUSES) for /metrics."""
        start = time.monotonic()
        while not self.stop_requested.is_set():
            now = time.monotonic()
            self.restarts.append((now, cause))
            recent = [t for t, _ in self.restarts if now - t <= self.plan.restart_window_s]
            if len(recent) > self.plan.max_restarts:
                self.say(
                    f"crash loop: {cause}; {len(recent) - 1} restarts in the last "
                    f"{self.plan.restart_window_s:g}s already (limit {self.plan.max_restarts}): exiting"
                )
                return EXIT_CRASH_LOOP
            self.say(f"{cause}: restarting tritonserver (restart {len(self.restarts)})")
            if self.restart_counter is not None:
                self.restart_counter.inc(kind)
            try:
                self._restart_triton()
            except LaunchError as e:
                kind, cause = "restart_failed", f"the restart failed ({str(e).splitlines()[0]})"
                continue
            if self.watchdog is not None:
                self.watchdog.reset()
            self.say(f"engine back after {time.monotonic() - start:.1f}s (restart {len(self.restarts)})")
            return None
        return None

    def _find_engine_pids(self, wait_s: float = 5.0) -> list[int]:
        """The llm_engine stub(s) of this launcher's repository (their command line names its model.py) and
        their children (TP rank workers). Looked for again for up to `wait_s` when none is seen: once (of
        dozens of restarts, on a loaded box) a scan right after the models were ready missed the stub that
        served requests a moment later, and an empty list reads as a dead engine."""
        start = time.monotonic()
        tries = 1
        while not (pids := self._scan_engine_pids()) and time.monotonic() - start < wait_s:
            time.sleep(0.1)
            tries += 1
        if pids and tries > 1:
            self.say(f"the engine's stub showed up {time.monotonic() - start:.1f}s after its model was ready")
        return pids

    def _scan_engine_pids(self) -> list[int]:
        if self._triton_start is None:
            return []
        repo = str(self._triton_start[0]).encode() + b"/"
        every = self._repo_processes()
        stubs = [p for p in every if repo + b"llm_engine/" in _cmdline(p)]
        self._stub_pids = set(stubs)
        return [q for p in stubs for q in (p, *_descendants(p))]

    def _repo_processes(self) -> list[int]:
        """Every process of this model repository (the stubs, their rank workers), with the python backend's
        shared-memory regions named in their command lines remembered: a stub killed outright, or one of a
        tritonserver whose engine never loaded, leaves its region behind; unlinked once tritonserver is dead
        (`_unlink_shm`)."""
        if self._triton_start is None:
            return []
        repo = str(self._triton_start[0]).encode() + b"/"
        every = [p for p in _all_pids() if repo in _cmdline(p)]
        self._shm_regions |= {
            arg.decode()
            for p in every
            for arg in _cmdline(p).split(b"\0")
            if arg.startswith(b"triton_python_backend_shm_region")
        }
        return every

    def _engine_failure(self) -> tuple[str, str] | None:
        """(cause kind, why) the engine cannot serve any more, or None."""
        if self.triton is None:
            return None
        dead = [p for p in self._engine_pids if not _alive(p)]
        # A dead stub first: tritonserver aborts when its stub dies, and a loaded box may let that happen
        # before this look; the stub is the cause. (A stub outlives a tritonserver that was killed.)
        stubs = [p for p in dead if p in self._stub_pids]
        if stubs:
            return "engine_died", f"an llm_engine process died (the stub, pid {stubs[0]})"
        if not self.triton.alive():
            return "tritonserver_died", f"tritonserver exited (code {self.triton.proc.returncode})"
        if not self._engine_pids:  # it died between loading and being looked for
            return "engine_died", "an llm_engine process died (no llm_engine stub after its model loaded)"
        if not dead:
            return None
        return "rank_died", f"an llm_engine process died (a rank worker, pid {dead[0]})"

    def _restart_triton(self) -> None:
        """Kill tritonserver and everything under it at once (in-flight streams end now: the gateway turns
        the broken gRPC streams into an error chunk + [DONE]; new requests get 503 + Retry-After until the
        models are back), start it again on the same ports, wait for the models."""
        assert self.triton is not None and self._triton_start is not None
        repo, run_dir, ports = self._triton_start
        # Every stub of this repository (a stub whose tritonserver died is an orphan outside its process
        # group, and lives on) and its children; the python backend's shared-memory regions are named in the
        # stubs' command lines, and a killed tritonserver does not unlink them.
        stubs = self._repo_processes()
        doomed = [q for p in stubs for q in (p, *_descendants(p))]
        self.triton.kill()
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._unlink_shm(final=False)
        self._start_triton(repo, run_dir, *ports)
        self._wait_models(f"127.0.0.1:{ports[0]}")
        self._engine_pids = self._find_engine_pids()
        self.say(f"watching the engine's processes: {self._engine_pids}")

    def _shutdown(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.stop(timeout_s=5)
        if self.gateway is not None:
            self.say("stopping the gateway")
            self.gateway.stop(timeout_s=15)
        if self.triton is not None:
            self.say("stopping tritonserver")
            self._repo_processes()  # their regions: a tritonserver whose engine never loaded leaves them
            self.triton.stop(timeout_s=30)
            self._unlink_shm(final=True)
        self.say("stopped")

    def _unlink_shm(self, final: bool) -> None:
        """The python backend's shared-memory regions of stubs that are gone (tritonserver is dead), and the
        tensor-parallel all-reduce segment of an engine killed before its ranks attached (its owner removes
        the name once they have: only an engine killed while starting leaves one)."""
        for name in self._shm_regions:
            Path("/dev/shm", name).unlink(missing_ok=True)
        self._shm_regions.clear()
        if self._shm_since is not None:
            # A stub that died in initialize() before any scan saw it (a restart that fails) is named nowhere
            # we looked; its region is one made since the first tritonserver started that no process maps any
            # more. The window stays open across restarts, since a region too fresh to judge at one restart is
            # judged at the next; at the last call, wait until the freshest is old enough to judge.
            if final:
                time.sleep(_settle_wait(self._shm_since))
            for path in _orphan_regions(self._shm_since):
                path.unlink(missing_ok=True)
        if self.plan.engine.instance_id:  # the launcher always sets one: the names are this instance's
            prefix = segment_prefix(self.plan.engine.instance_id)
            for path in Path("/dev/shm").glob(prefix + "*"):
                path.unlink(missing_ok=True)


_REGION_PREFIX = "triton_python_backend_shm_region"


_SETTLE_S = 2.0  # a region younger than this may be one another stack is still setting up (not yet mapped)


def _orphan_regions(since: float, settle_s: float = _SETTLE_S) -> list[Path]:
    """Python-backend regions in /dev/shm created after `since` (wall clock) and at least `settle_s` ago that
    no live process maps: a live stack's region is mapped by its tritonserver and stub from the moment it is
    made, so only the regions of dead processes are named (another stack's included: they are garbage too)."""
    now = time.time()
    candidates = [path for path, made in _regions_made_since(since) if made <= now - settle_s]
    if not candidates:
        return []
    mapped: set[str] = set()
    for pid in _all_pids():
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            at = line.find("/dev/shm/" + _REGION_PREFIX)
            if at >= 0:
                mapped.add(line[at + len("/dev/shm/") :].split(" ", 1)[0])
    return [p for p in candidates if p.name not in mapped]


def _settle_wait(since: float, settle_s: float = _SETTLE_S) -> float:
    """Seconds until every python-backend region made since `since` is `settle_s` old (0: none younger)."""
    now = time.time()
    wait = max((made + settle_s - now for _, made in _regions_made_since(since)), default=0.0)
    return min(max(wait, 0.0), settle_s)


def _regions_made_since(since: float) -> list[tuple[Path, float]]:
    """Python-backend regions in /dev/shm with their creation time (ctime), those made at or after `since`."""
    found = []
    for path in Path("/dev/shm").glob(_REGION_PREFIX + "*"):
        try:
            made = path.stat().st_ctime
        except OSError:
            continue
        if made >= since:
            found.append((path, made))
    return found


def _all_pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def _descendants(pid: int) -> list[int]:
    todo, seen = _children(pid), []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
