"""A Qwen2.5-VL checkpoint served text-only by the engine (issue #29 part 2a): `ModelInfo.from_dir` gives
its text decoder, so the engine loads it as the Qwen2 it is, with or without `enable_mm`; without images
M-RoPE equals 1-D RoPE, so greedy tokens equal transformers' Qwen2_5_VLForConditionalGeneration."""

from __future__ import annotations

import pytest

from paddlellm.llm import LLM
from paddlellm.sampling import SamplingParams

torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)


@pytest.fixture(scope="module")
def vl_path(tmp_path_factory, default_model_dir) -> str:
    from scripts.make_tiny_vl_model import make_tiny_vl_model

    return make_tiny_vl_model(str(tmp_path_factory.mktemp("tiny_vl") / "qwen2_5_vl"), default_model_dir)


@pytest.mark.parametrize("enable_mm", [False, True])
def test_text_only_greedy_tokens_match_transformers(vl_path: str, enable_mm: bool) -> None:
    prompts = [[1, 2, 3, 4, 5], [700, 12, 9000, 31, 5, 44, 2]]
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(vl_path, dtype=torch.float32).eval()
    with LLM(vl_path, max_model_len=256, enable_mm=enable_mm) as llm:
        outs = llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    for prompt, out in zip(prompts, outs, strict=True):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert list(out.token_ids) == ref[0, len(prompt) :].tolist()
