"""Render a copy of the model repository with the launcher's values, strictly.

`model_repository/` as committed is runnable: every `config.pbtxt` parameter holds a real default (the
default model's path relative to the repository, FastDeploy's defaults for the rest), so a stock
`tritonserver --model-repository model_repository` serves it and Triton users edit the values in place.
The launcher renders a copy with its flags applied: it sets the value of every parameter it is given in
every config.pbtxt that declares it. It is strict: a value no config.pbtxt declares fails (a flag that
would silently do nothing), and so does a parameter written in another form than the one-line
`parameters { key: "k" value: { string_value: "v" } }` (it could not be set reliably); values are escaped
for the pbtxt string literal they land in, and the engine's parameters are parsed back (EngineConfig) so a
malformed value fails here, naming the parameter, instead of in the Triton stub.

The llm_engine model's parameters are generated from the EngineConfig declarations (one `parameters` entry
per field, its default as the value and its help as a comment) between two marker lines of its
config.pbtxt: `python -m launcher.render --update` rewrites that block, `--check` (and a test) fails when it
is stale.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

from paddlellm.config import EngineConfig
from paddlellm.errors import ConfigError

MARKER = ".paddlellm-rendered"  # lets a later render replace an earlier one, and nothing else
CONFIG = "config.pbtxt"
# The committed `model` value: the default model (scripts/setup.sh converts it there), relative to the model
# repository, which the adapters resolve it against (paddlellm/triton/params.py).
COMMITTED_MODEL = "../.models/SmolLM2-135M-Instruct"

_PARAMETER = re.compile(
    r'^(?P<head>[ \t]*parameters \{ key: "(?P<key>[^"\\]+)" value: \{ string_value: ")'
    r'(?P<value>(?:[^"\\\n]|\\.)*)(?P<tail>" \} \})[ \t]*$',
    re.M,
)
_ANY_PARAMETER = re.compile(r"^[ \t]*parameters\b", re.M)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parameters(text: str, where: str = CONFIG) -> dict[str, str]:
    """The `parameters` of one config.pbtxt text, {key: string value}. Raises ConfigError (naming `where`)
    for a parameter not written in the one-line form."""
    found = {m.group("key"): _unescape(m.group("value")) for m in _PARAMETER.finditer(text)}
    if len(_ANY_PARAMETER.findall(text)) != len(list(_PARAMETER.finditer(text))):
        raise ConfigError(
            f"{where}: write each parameter on one line as "
            'parameters { key: "name" value: { string_value: "value" } } so it can be set'
        )
    return found


def set_parameters(text: str, values: Mapping[str, str]) -> tuple[str, set[str]]:
    """`text` with the values of the parameters named in `values` replaced; and the names it declared."""
    used: set[str] = set()

    def put(m: re.Match[str]) -> str:
        key = m.group("key")
        if key not in values:
            return m.group(0)
        used.add(key)
        return m.group("head") + _escape(values[key]) + m.group("tail")

    return _PARAMETER.sub(put, text), used


def render_model_repository(src: Path | str, dst: Path | str, params: Mapping[str, str]) -> Path:
    """Copy `src` to `dst` with the given parameter values set. `dst` must be absent, empty, or an earlier
    render (it is replaced). Raises ConfigError naming unused, non-string or malformed parameters."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConfigError(f"model repository {src} is not a directory")
    not_str = sorted(k for k, v in params.items() if not isinstance(v, str))
    if not_str:
        raise ConfigError(f"parameter values must be strings: {', '.join(not_str)}")
    rendered: dict[Path, str] = {}
    used: set[str] = set()
    for path in _configs(src):
        rel = path.relative_to(src)
        parameters(path.read_text(encoding="utf-8"), str(rel))  # the form check
        rendered[rel], declared = set_parameters(path.read_text(encoding="utf-8"), params)
        used |= declared
    unused = sorted(set(params) - used)
    if unused:
        raise ConfigError(f"parameter(s) not declared by any {CONFIG} in {src}: {', '.join(unused)}")
    engine = rendered.get(Path(ENGINE_MODEL) / CONFIG)
    if engine is not None:
        EngineConfig.from_params(parameters(engine))  # "config 'block_size': cannot parse ..." names it
    _prepare(dst)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", MARKER)
    shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True)
    for rel, text in rendered.items():
        (dst / rel).write_text(text, encoding="utf-8")
    (dst / MARKER).write_text(f"rendered from {src.resolve()}\n", encoding="utf-8")
    return dst


def _configs(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob(CONFIG) if p.is_file())


def _prepare(dst: Path) -> None:
    if dst.exists():
        if not dst.is_dir():
            raise ConfigError(f"render target {dst} exists and is not a directory")
        if any(dst.iterdir()):
            if not (dst / MARKER).exists():
                raise ConfigError(f"render target {dst} is not empty and was not rendered by us; refusing")
            shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------ the generated llm_engine parameters
ENGINE_MODEL = "llm_engine"
BLOCK_BEGIN, BLOCK_END = "# BEGIN engine options", "# END engine options"
_BLOCK_SOURCE = ": generated from paddlellm/config.py (python -m launcher.render --update)"


def committed_engine_values() -> dict[str, str]:
    """The values the committed llm_engine config.pbtxt holds: EngineConfig's defaults, the default model."""
    return EngineConfig(model=COMMITTED_MODEL).to_params()


def engine_parameter_block() -> str:
    """One `parameters` entry per EngineConfig field, in declaration order, each under its help text."""
    lines = [BLOCK_BEGIN + _BLOCK_SOURCE]
    values = committed_engine_values()
    for f, _, info in EngineConfig.options():
        help_text = info.help + (f" (one of: {', '.join(info.choices)})" if info.choices else "")
        lines += textwrap.wrap(f"{f.name}: {help_text}", 108, initial_indent="# ", subsequent_indent="#   ")
        value = _escape(values[f.name])
        lines.append(f'parameters {{ key: "{f.name}" value: {{ string_value: "{value}" }} }}')
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


def with_engine_block(text: str) -> str:
    """`text` (llm_engine's config.pbtxt) with its generated block replaced by the current one."""
    start, end = text.find(BLOCK_BEGIN), text.find(BLOCK_END)
    if start < 0 or end < start:
        raise ConfigError(f"{ENGINE_MODEL}/config.pbtxt has no '{BLOCK_BEGIN}' ... '{BLOCK_END}' block")
    return text[:start] + engine_parameter_block() + text[end + len(BLOCK_END) :].lstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.render", description=__doc__.split("\n")[0])
    default_repository = Path(__file__).resolve().parents[1] / "model_repository"
    parser.add_argument("--repository", type=Path, default=default_repository)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--update", action="store_true", help="rewrite llm_engine's generated parameters")
    mode.add_argument("--check", action="store_true", help="exit 1 if they differ from paddlellm/config.py")
    args = parser.parse_args(argv)
    path = args.repository / ENGINE_MODEL / "config.pbtxt"
    text = path.read_text(encoding="utf-8")
    fresh = with_engine_block(text)
    if args.check:
        if fresh != text:
            print(f"{path} is stale: run python -m launcher.render --update", file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        path.write_text(fresh, encoding="utf-8")
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
