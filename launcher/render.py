"""Render the model repository template with strict substitution.

`model_repository/` holds templates: `config.pbtxt` files whose `parameters` values are `${name}`
placeholders. Rendering copies the tree and replaces every placeholder. It is strict both ways: a
placeholder without a value fails, and so does a value no placeholder uses (a launcher flag that would
silently do nothing). Values are escaped for the pbtxt string literal they land in.

The llm_engine model's parameters are generated from the EngineConfig declarations (one `parameters` entry
per field, with its help as a comment) between two marker lines of its config.pbtxt:
`python -m launcher.render --update` rewrites that block, `--check` (and a test) fails when it is stale.
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

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MARKER = ".paddlellm-rendered"  # lets a later render replace an earlier one, and nothing else
TEMPLATE_SUFFIXES = (".pbtxt",)


def placeholders(text: str) -> set[str]:
    names = set(PLACEHOLDER.findall(text))
    bad = sorted(n for n in names if not _NAME.match(n))
    if bad:
        raise ConfigError(f"malformed placeholder(s): {', '.join('${' + n + '}' for n in bad)}")
    return names


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def substitute(text: str, params: Mapping[str, str]) -> str:
    """Replace every `${name}`; an unknown name raises ConfigError."""
    missing = sorted(placeholders(text) - set(params))
    if missing:
        raise ConfigError(f"no value for template parameter(s): {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: _escape(params[m.group(1)]), text)


def template_parameters(src: Path) -> set[str]:
    """Every placeholder name used under `src`."""
    return {n for f in _templates(src) for n in placeholders(f.read_text(encoding="utf-8"))}


def render_model_repository(src: Path | str, dst: Path | str, params: Mapping[str, str]) -> Path:
    """Copy `src` to `dst` with every placeholder substituted. `dst` must be absent, empty, or an earlier
    render (it is replaced). Raises ConfigError naming missing, unused or non-string parameters."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConfigError(f"model repository template {src} is not a directory")
    not_str = sorted(k for k, v in params.items() if not isinstance(v, str))
    if not_str:
        raise ConfigError(f"template parameter values must be strings: {', '.join(not_str)}")
    used = template_parameters(src)
    missing, unused = sorted(used - set(params)), sorted(set(params) - used)
    if missing:
        raise ConfigError(f"no value for template parameter(s): {', '.join(missing)}")
    if unused:
        raise ConfigError(f"parameter(s) not used by any template in {src}: {', '.join(unused)}")
    _prepare(dst)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", MARKER)
    shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True)
    for rel in (f.relative_to(src) for f in _templates(src)):
        out = dst / rel
        out.write_text(substitute(out.read_text(encoding="utf-8"), params), encoding="utf-8")
    (dst / MARKER).write_text(f"rendered from {src.resolve()}\n", encoding="utf-8")
    return dst


def _templates(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in TEMPLATE_SUFFIXES)


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


def engine_parameter_block() -> str:
    """One `parameters` entry per EngineConfig field, in declaration order, each under its help text."""
    lines = [BLOCK_BEGIN + _BLOCK_SOURCE]
    for f, _, info in EngineConfig.options():
        help_text = info.help + (f" (one of: {', '.join(info.choices)})" if info.choices else "")
        lines += textwrap.wrap(f"{f.name}: {help_text}", 108, initial_indent="# ", subsequent_indent="#   ")
        lines.append(f'parameters {{ key: "{f.name}" value: {{ string_value: "${{{f.name}}}" }} }}')
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
