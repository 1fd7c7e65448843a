"""The import boundaries docs/architecture.md draws, checked by walking every module's imports (AST)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PADDLE_OK = ("paddlellm/models/", "paddlellm/layers/", "paddlellm/worker/", "paddlellm/executor/")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    return _imports_of(path.read_text(encoding="utf-8"), package)


def _imports_of(source: str, package: list[str]) -> set[str]:
    """Every module `source` (a module of `package`) imports: `import x`, `from x import y` (y too, when it
    may be a submodule), relative imports resolved against the package, and `importlib.import_module("x")` /
    `__import__("x")` with a literal name, so a rule cannot be dodged by the spelling of an import."""
    tree = ast.parse(source)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            # `from paddlellm import protocol` / `from . import rank_process` import submodules
            names.update(f"{module}.{a.name}" for a in node.names if a.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return {n for n in names if n}


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
    parameters, and never the launcher above it (`gateway/api_server.py` hands over to `python -m launcher`
    by exec, not by import: no cycle between the two folders)."""
    contracts = ("paddlellm.protocol", "paddlellm.errors", "paddlellm.sampling")
    bad = [
        (_rel(p), m)
        for p in _files("gateway")
        for m in _imports(p)
        if (m.startswith("paddlellm.") and not m.startswith(contracts)) or m.split(".")[0] == "launcher"
    ]
    assert not bad, f"gateway imports engine internals or the launcher: {bad}"


def _reaching(dirs: tuple[str, ...], forbidden: tuple[str, ...]) -> list[tuple[str, str]]:
    return [
        (_rel(p), m)
        for p in [f for d in dirs for f in ((ROOT / d,) if d.endswith(".py") else (ROOT / d).rglob("*.py"))]
        for m in _imports(p)
        if any(m == f or m.startswith(f + ".") for f in forbidden)
    ]


def test_engine_executor_worker_import_in_one_direction() -> None:
    """engine -> executor -> worker -> models/layers: the engine drives an executor, the executor drives the
    ranks' workers (the rank process lives on the executor's side). What a step carries down and back
    (`paddlellm/step_types.py`) sits below all three, so none of them imports the layer above it."""
    assert not _reaching(("paddlellm/executor",), ("paddlellm.engine",)), "executor imports the engine"
    bad = _reaching(("paddlellm/worker",), ("paddlellm.engine", "paddlellm.executor"))
    assert not bad, f"worker imports the engine or the executor: {bad}"
    bad = _reaching(
        ("paddlellm/step_types.py",),
        ("paddlellm.engine", "paddlellm.executor", "paddlellm.worker", "paddlellm.triton"),
    )
    assert not bad, f"the step types import a layer above them: {bad}"


def test_import_walk_sees_relative_and_dynamic_imports() -> None:
    """The rules above are only as good as the walk: a relative import or importlib must not slip by."""
    found = _imports_of(
        "import importlib\n"
        "from ..executor import rank_process\n"
        "from . import sampler\n"
        "engine = importlib.import_module('paddlellm.engine.core')\n"
        "__import__('launcher.cli')\n",
        ["paddlellm", "worker"],
    )
    assert {"paddlellm.executor.rank_process", "paddlellm.worker.sampler", "paddlellm.engine.core",
            "launcher.cli"} <= found, found



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
