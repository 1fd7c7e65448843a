"""The import boundaries DESIGN.md draws, checked by walking every module's imports (AST, not run)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PADDLE_OK = ("paddlellm/models/", "paddlellm/layers/", "paddlellm/worker/", "paddlellm/executor/")


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "paddlellm":  # `from paddlellm import protocol` imports paddlellm.protocol
                names.update(f"paddlellm.{a.name}" for a in node.names)
            else:
                names.add(node.module)
    return names


def _files(*dirs: str) -> list[pathlib.Path]:
    return [p for d in dirs for p in (ROOT / d).rglob("*.py")]


def _rel(p: pathlib.Path) -> str:
    return p.relative_to(ROOT).as_posix()


def test_paddle_only_in_model_execution() -> None:
    bad = [
        (_rel(p), m)
        for p in _files("paddlellm", "gateway", "launcher", "model_repository")
        for m in _imports(p)
        if m.split(".")[0] == "paddle" and not _rel(p).startswith(PADDLE_OK)
    ]
    assert not bad, f"paddle imported outside model execution: {bad}"


def test_triton_utils_only_in_adapters() -> None:
    bad = [
        (_rel(p), m)
        for p in _files("paddlellm", "gateway", "launcher")
        for m in _imports(p)
        if m.startswith("triton_python_backend_utils") and not _rel(p).startswith("paddlellm/triton/")
    ]
    assert not bad, f"triton_python_backend_utils imported outside paddlellm/triton: {bad}"


def test_engine_core_is_numpy_only() -> None:
    allowed_third_party = {"numpy"}
    core = [p for p in _files("paddlellm/engine") if p.name != "__init__.py"]
    core += [ROOT / "paddlellm" / n for n in ("config.py", "sampling.py", "errors.py")]
    core += _files("paddlellm/protocol")
    bad = []
    for p in core:
        for m in _imports(p):
            top = m.split(".")[0]
            if top in ("paddlellm", "__future__") or top in allowed_third_party or _is_stdlib(top):
                continue
            bad.append((_rel(p), m))
    assert not bad, f"engine core imports more than numpy: {bad}"


def test_gateway_uses_only_engine_contracts() -> None:
    """The HTTP process knows the engine only through the wire contracts, the error types and the sampling
    parameters. `gateway/api_server.py` is the stack's command (FastDeploy's name): it may only hand over to
    the launcher, which sits above both halves."""
    contracts = ("paddlellm.protocol", "paddlellm.errors", "paddlellm.sampling")
    bad = [
        (_rel(p), m)
        for p in _files("gateway")
        for m in _imports(p)
        if (m.startswith("paddlellm") and not m.startswith(contracts))
        or (m.startswith("launcher") and _rel(p) != "gateway/api_server.py")
    ]
    assert not bad, f"gateway imports engine internals: {bad}"


def test_launcher_imports_neither_paddle_nor_triton_adapters() -> None:
    """The supervisor builds an EngineConfig and renders config.pbtxt, but runs no model code."""
    heavy = {"paddle", "triton_python_backend_utils", "paddlellm.triton", "paddlellm.models",
             "paddlellm.layers", "paddlellm.worker", "paddlellm.executor", "paddlellm.engine"}
    bad = [
        (_rel(p), m)
        for p in _files("launcher")
        for m in _imports(p)
        if m.split(".")[0] in heavy or ".".join(m.split(".")[:2]) in heavy
    ]
    assert not bad, f"launcher imports model code: {bad}"


def test_layers_and_models_do_not_reach_up() -> None:
    """Layers build on nothing above them; models build on layers. Neither knows the worker, executor or
    engine that drive them (weights come from paddlellm.weight_reader, below both)."""
    above = ("paddlellm.worker", "paddlellm.executor", "paddlellm.engine", "paddlellm.triton")
    bad = [
        (_rel(p), m)
        for p in _files("paddlellm/layers", "paddlellm/models")
        for m in _imports(p)
        if m.startswith(above)
        or (_rel(p).startswith("paddlellm/layers/") and m.startswith("paddlellm.models"))
    ]
    assert not bad, f"a layer or model imports the code above it: {bad}"


def _is_stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names


def test_module_names_are_unique_across_the_packages() -> None:
    """Names that say what a thing is: no two production modules share a file name (two `backend.py` or
    `errors.py` in one traceback are a guessing game)."""
    seen: dict[str, str] = {}
    clashes = []
    for p in _files("paddlellm", "gateway", "launcher"):
        if p.name == "__init__.py":
            continue
        if p.name in seen:
            clashes.append((seen[p.name], _rel(p)))
        seen[p.name] = _rel(p)
    assert not clashes, clashes
