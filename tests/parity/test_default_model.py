"""The default model (SmolLM2-135M-Instruct converted from its GGUF) against transformers loading that GGUF.

8 chat prompts (English, Chinese, emoji): prompt logits within 2e-3 and greedy continuations of 32 tokens
identical, generated together under continuous batching; on the CPU's best kernel ISA and on AVX2 forced.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)

from paddlellm.sampling import SamplingParams  # noqa: E402
from tests.kernel_choices import model_kernels  # noqa: E402
from tests.parity.driver import run_requests  # noqa: E402
from tests.parity.test_tiny_models import hf_greedy, hf_logits, make_runner  # noqa: E402

# The first test builds the transformers reference in its setup: 150-170 s on the 2-core box at load ~10.
pytestmark = [pytest.mark.parity, pytest.mark.timeout(900)]

PROMPTS = [
    "List 3 countries and their capitals.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a CPU cache is in one sentence.",
    "请用一句话介绍北京。",
    "你好！你叫什么名字？",
    "What does this emoji mean: 🚀🌕?",
    "Give me three words that rhyme with cat 🐱.",
]


@pytest.fixture(scope="module")
def chat_ids(default_model_dir: str) -> list[list[int]]:
    tok = transformers.AutoTokenizer.from_pretrained(default_model_dir)
    out = []
    for text in PROMPTS:
        enc = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        out.append(list(enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc))
    return out


@pytest.fixture(scope="module")
def hf_gguf_model(default_gguf_file: str):
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(default_gguf_file), gguf_file=os.path.basename(default_gguf_file), dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def hf_expected(chat_ids, hf_gguf_model) -> list[list[int]]:
    return [hf_greedy(hf_gguf_model, ids, 32) for ids in chat_ids]


@pytest.mark.parametrize("kernels", model_kernels())
def test_default_model_matches_transformers_gguf(
    default_model_dir: str, chat_ids, hf_gguf_model, hf_expected, kernels: str
) -> None:
    runner = make_runner(
        default_model_dir, block_size=64, num_blocks=64, max_model_len=2048, cpu_kernels=kernels
    )
    for ids in chat_ids:
        diff = np.abs(runner.prompt_logits(ids) - hf_logits(hf_gguf_model, ids)).max()
        assert diff <= 2e-3, f"max abs logit diff {diff} on {len(ids)}-token prompt"
    got = run_requests(runner, chat_ids, SamplingParams(temperature=0.0, max_tokens=32), token_budget=256)
    assert got == hf_expected
