"""Where tritonserver and its python backend live, and the environment that launches them.

Pure stdlib and Triton-free, so the launcher (gateway side) can import it. Two layouts are known:

* the ``nvidia-pytriton`` wheel installed in the running Python environment: it carries
  ``pytriton/tritonserver/bin/tritonserver``, ``backends/python`` and one
  ``python_backend_stubs/<major.minor>/triton_python_backend_stub`` per Python version. Triton wants
  the stub next to ``libtriton_python.so``, so :func:`install_backend_dir` assembles a backend
  directory (``<repo>/.triton/backends/python``) from those pieces;
* Triton's NGC image: ``/opt/tritonserver/bin/tritonserver`` with ``/opt/tritonserver/backends``.

The stub embeds its own interpreter, so the environment must make it find the right ``libpython``
(``LD_LIBRARY_PATH``) and the project's packages (``PYTHONPATH``: the repo root and site-packages).

``python -m launcher.tritonenv setup`` builds the backend directory, writes a ``tritonserver`` wrapper
next to it (``<repo>/.triton/bin/tritonserver``: the wheel's binary with ``--backend-directory`` filled in,
because Triton's default is NGC's ``/opt/tritonserver/backends``) and prints ``export`` lines;
``scripts/setup_triton.sh`` wraps it and writes them to ``<repo>/.triton/env``. After
``source .triton/env``, ``tritonserver --model-repository model_repository`` serves the committed repository
as it would in Triton's own image.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BACKEND_ROOT = REPO_ROOT / ".triton" / "backends"
NGC_ROOT = Path("/opt/tritonserver")
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub")


class TritonNotFound(RuntimeError):
    """No usable tritonserver installation; the message says what to do."""


@dataclass(frozen=True)
class PytritonWheel:
    """Paths inside an installed nvidia-pytriton wheel."""

    tritonserver: Path
    backend_src: Path
    """``backends/python``: libtriton_python.so and triton_python_backend_utils.py."""
    stub: Path
    """The triton_python_backend_stub built for this Python version."""
    libs: Path
    """``nvidia_pytriton.libs``: the shared libraries tritonserver and the stub link against."""


@dataclass(frozen=True)
class TritonInstall:
    """What a launcher needs: the binary, ``--backend-directory`` and environment additions."""

    tritonserver: Path
    backend_dir: Path
    env: Mapping[str, str]
    """Variables to set on top of the caller's environment (see :meth:`launch_env`)."""

    def launch_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The full environment for ``subprocess.Popen(..., env=...)``: ``base`` (default os.environ)
        with :attr:`env` prepended to its path-like variables and set otherwise."""
        merged = dict(os.environ if base is None else base)
        for key, value in self.env.items():
            old = merged.get(key, "")
            merged[key] = _join_paths([value, old]) if key in _PATH_VARS else value
        return merged

    def command(self, model_repository: Path, *args: str) -> list[str]:
        """``tritonserver --model-repository ... --backend-directory ...`` followed by ``args``."""
        return [
            str(self.tritonserver),
            f"--model-repository={model_repository}",
            f"--backend-directory={self.backend_dir}",
            *args,
        ]


_PATH_VARS = frozenset({"PATH", "LD_LIBRARY_PATH", "PYTHONPATH"})


def _join_paths(parts: list[str]) -> str:
    seen: list[str] = []
    for part in parts:
        for item in part.split(os.pathsep):
            if item and item not in seen:
                seen.append(item)
    return os.pathsep.join(seen)


def find_pytriton_wheel(python_version: str | None = None) -> PytritonWheel | None:
    """The nvidia-pytriton wheel in this environment, or None. Does not import pytriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    server = pkg / "tritonserver"
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    wheel = PytritonWheel(
        tritonserver=server / "bin" / "tritonserver",
        backend_src=server / "backends" / "python",
        stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=pkg.parent / "nvidia_pytriton.libs",
    )
    missing = [p for p in (wheel.tritonserver, wheel.backend_src, wheel.stub, wheel.libs) if not p.exists()]
    if missing:
        raise TritonNotFound(f"nvidia-pytriton is incomplete for Python {version}: missing {missing}")
    return wheel


def python_env(repo_root: Path = REPO_ROOT) -> dict[str, str]:
    """PATH, LD_LIBRARY_PATH and PYTHONPATH that make the stub's embedded interpreter be this Python.

    The stub ignores PYTHONPATH (its interpreter is configured in isolation) and has no argv[0], so
    Python finds its prefix by looking up ``python3`` on PATH: with this environment's ``bin`` first,
    a venv's ``pyvenv.cfg`` is found, ``sys.prefix`` is the venv, its site-packages (and .pth files)
    are on ``sys.path``, and ``sys.executable`` (used by multiprocessing's spawn) is the venv's python.
    PYTHONPATH is still set for stubs that honour it.
    """
    site = sysconfig.get_paths()
    pythonpath = _join_paths([str(repo_root), site["purelib"], site["platlib"]])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    bindir = Path(sys.executable).parent
    return {"PATH": str(bindir), "LD_LIBRARY_PATH": libdir, "PYTHONPATH": pythonpath}


def install_backend_dir(wheel: PytritonWheel, backend_root: Path = DEFAULT_BACKEND_ROOT) -> list[Path]:
    """Assemble ``backend_root/python`` from the wheel; copy only changed files. Returns those copied."""
    target = backend_root / "python"
    target.mkdir(parents=True, exist_ok=True)
    sources = (wheel.backend_src / BACKEND_FILES[0], wheel.backend_src / BACKEND_FILES[1], wheel.stub)
    copied = []
    for src, name in zip(sources, BACKEND_FILES, strict=True):
        dst = target / name
        if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
            shutil.copy2(src, dst)
            copied.append(dst)
    (target / BACKEND_FILES[2]).chmod(0o755)
    return copied


def ensure_importable(repo_root: Path = REPO_ROOT) -> Path | None:
    """Make ``paddlellm`` importable by the stub, which ignores PYTHONPATH.

    If an isolated interpreter (``python -I``, no cwd, no PYTHONPATH) cannot import ``paddlellm``
    from this environment, write ``paddlellm_repo.pth`` (the repo root) into site-packages, as an
    editable install would. Returns the file written, or None when nothing was needed.
    """
    probe = [sys.executable, "-I", "-c", "import paddlellm, sys; print(paddlellm.__file__)"]
    found = subprocess.run(probe, cwd="/", capture_output=True, text=True, check=False)
    if found.returncode == 0:
        return None
    pth = Path(sysconfig.get_paths()["purelib"]) / "paddlellm_repo.pth"
    pth.write_text(f"{repo_root}\n")
    return pth


def locate(repo_root: Path = REPO_ROOT, backend_root: Path | None = None) -> TritonInstall:
    """The tritonserver to launch: the pytriton wheel (backend dir built by setup), else NGC's /opt.

    Raises TritonNotFound with the fix when neither is usable.
    """
    root = backend_root or repo_root / ".triton" / "backends"
    wheel = find_pytriton_wheel()
    env = python_env(repo_root)
    if wheel is not None:
        missing = [name for name in BACKEND_FILES if not (root / "python" / name).exists()]
        if missing:
            raise TritonNotFound(f"backend directory {root} lacks {missing}: run scripts/setup_triton.sh")
        env["LD_LIBRARY_PATH"] = _join_paths([env["LD_LIBRARY_PATH"], str(wheel.libs)])
        return TritonInstall(tritonserver=wheel.tritonserver, backend_dir=root, env=env)
    ngc_server = NGC_ROOT / "bin" / "tritonserver"
    if ngc_server.exists():
        # NGC's stub embeds the image's own Python; only the packages need adding.
        return TritonInstall(ngc_server, NGC_ROOT / "backends", {"PYTHONPATH": env["PYTHONPATH"]})
    raise TritonNotFound("no tritonserver: install nvidia-pytriton (pip) or use Triton's NGC image")


def wrapper_path(backend_root: Path) -> Path:
    return backend_root.parent / "bin" / "tritonserver"


def write_tritonserver_wrapper(install: TritonInstall, path: Path) -> bool:
    """A ``tritonserver`` command that is the wheel's binary with this backend directory (a later
    ``--backend-directory`` on its command line still wins). True when the file changed."""
    text = (
        "#!/bin/sh\n"
        "# tritonserver from the nvidia-pytriton wheel with the python backend set-up assembled\n"
        "# (written by scripts/setup_triton.sh; source .triton/env for the rest of its environment)\n"
        f'exec "{install.tritonserver}" --backend-directory="{install.backend_dir}" "$@"\n'
    )
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return True


def _shell_lines(install: TritonInstall, wrapper: Path | None = None) -> list[str]:
    lines = [
        f"export TRITONSERVER={install.tritonserver}",
        f"export TRITON_BACKEND_DIR={install.backend_dir}",
    ]
    if wrapper is not None:
        lines.append(f'export PATH="{wrapper.parent}${{PATH:+:$PATH}}"')
    for key, value in install.env.items():
        # Path-like variables are prepended to whatever the sourcing shell already has.
        line = f'export {key}="{value}${{{key}:+:${key}}}"' if key in _PATH_VARS else f"export {key}={value}"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.tritonenv", description=__doc__.split("\n")[0])
    parser.add_argument(
        "action", choices=("setup", "env"), help="setup: build the backend dir; env: print the exports"
    )
    parser.add_argument("--backend-root", type=Path, default=DEFAULT_BACKEND_ROOT)
    args = parser.parse_args(argv)
    try:
        if args.action == "setup":
            wheel = find_pytriton_wheel()
            if wheel is None:
                raise TritonNotFound("nvidia-pytriton is not installed in this Python environment")
            for path in install_backend_dir(wheel, args.backend_root):
                print(f"# installed {path}", file=sys.stderr)
            pth = ensure_importable()
            if pth is not None:
                print(f"# wrote {pth} so the stub can import paddlellm", file=sys.stderr)
        install = locate(backend_root=args.backend_root)
    except TritonNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    wrapper = wrapper_path(args.backend_root) if install.backend_dir == args.backend_root else None
    if wrapper is not None and args.action == "setup" and write_tritonserver_wrapper(install, wrapper):
        print(f"# wrote {wrapper}", file=sys.stderr)
    print("\n".join(_shell_lines(install, wrapper if wrapper is not None and wrapper.exists() else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
