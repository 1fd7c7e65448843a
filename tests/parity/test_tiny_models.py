"""Parity of the Paddle decoder with HF transformers on small random-weight checkpoints of each architecture.

Logits of a whole prompt within 1e-3; greedy continuations of 32 tokens identical, for single requests and
for many requests of different lengths under continuous batching (chunked prefill, mixed prefill/decode
steps, staggered arrivals, reused blocks). The core cases run on every kernel choice of
tests/kernel_choices.py (the CPU's best ISA, and AVX2 forced).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)

from paddlellm.config import EngineConfig  # noqa: E402
from paddlellm.model_info import ModelInfo  # noqa: E402
from paddlellm.sampling import SamplingParams  # noqa: E402
from paddlellm.worker.model_runner import ModelRunner  # noqa: E402
from tests.kernel_choices import model_kernels  # noqa: E402
from tests.parity.driver import run_requests  # noqa: E402

pytestmark = pytest.mark.parity
ARCHS = ["llama", "qwen2", "qwen3", "ernie4_5", "mistral"]
GREEDY32 = SamplingParams(temperature=0.0, max_tokens=32)


def make_runner(
    path: str,
    block_size: int = 16,
    num_blocks: int = 256,
    max_model_len: int = 1024,
    cpu_kernels: str = "auto",
) -> ModelRunner:
    # quantization "none": the transformers-exact path (the default, auto, runs a GGUF checkpoint's stored
    # 4-bit blocks, which the quality gate in tests/quality judges instead)
    cfg = EngineConfig(
        model=path,
        block_size=block_size,
        max_model_len=max_model_len,
        num_threads=2,
        cpu_kernels=cpu_kernels,
        quantization="none",
    )
    return ModelRunner(cfg, ModelInfo.from_dir(path), num_blocks=num_blocks)


def hf_model(path: str):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return [rng.randint(3, vocab, n).tolist() for n in lengths]


@pytest.mark.parametrize("kernels", model_kernels())
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_logits_match(tiny_checkpoint, arch: str, tie: bool, kernels: str) -> None:
    path = tiny_checkpoint(arch=arch, tokenizer="llama2", tie=tie)
    runner = make_runner(path, cpu_kernels=kernels)
    ids = prompts(runner.info.vocab_size, [77])[0]
    diff = np.abs(runner.prompt_logits(ids) - hf_logits(hf_model(path), ids)).max()
    assert diff <= 1e-3, f"{arch} tie={tie}: max abs logit diff {diff}"


@pytest.mark.parametrize("kernels", model_kernels())
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_single_and_batched(tiny_checkpoint, arch: str, kernels: str) -> None:
    path = tiny_checkpoint(arch=arch, tokenizer="llama2", tie=False)
    runner = make_runner(path, cpu_kernels=kernels)
    model = hf_model(path)
    ps = prompts(runner.info.vocab_size, [5, 23, 1, 40, 17, 64], seed=1)
    expected = [hf_greedy(model, p, 32) for p in ps]
    assert run_requests(runner, ps[:1], GREEDY32) == expected[:1]
    # mixed steps: a 24-token budget chunks the long prompts while earlier requests decode
    got = run_requests(runner, ps, GREEDY32, token_budget=24, arrive_every=3)
    assert got == expected


@pytest.mark.parametrize("kernels", model_kernels())
def test_sixteen_concurrent_requests(tiny_checkpoint, kernels: str) -> None:
    path = tiny_checkpoint(arch="llama", tokenizer="llama2", tie=True)
    runner = make_runner(path, block_size=8, num_blocks=512, cpu_kernels=kernels)
    model = hf_model(path)
    lengths = [3 + 7 * i for i in range(16)]
    ps = prompts(runner.info.vocab_size, lengths, seed=2)
    expected = [hf_greedy(model, p, 32) for p in ps]
    assert run_requests(runner, ps, GREEDY32, token_budget=64, arrive_every=1) == expected


def test_chunked_prefill_equals_whole(tiny_checkpoint) -> None:
    path = tiny_checkpoint(arch="qwen3", tokenizer="llama2", tie=False)
    runner = make_runner(path, block_size=16, num_blocks=256, max_model_len=2048)
    p = prompts(runner.info.vocab_size, [900], seed=3)
    whole = run_requests(runner, p, GREEDY32, token_budget=2048)
    chunked = run_requests(runner, p, GREEDY32, token_budget=128)
    assert whole == chunked


def test_llama3_rope_scaling(tiny_checkpoint) -> None:
    path = tiny_checkpoint(arch="llama", tokenizer="llama2", rope_scaling="llama3")
    runner = make_runner(path)
    ids = prompts(runner.info.vocab_size, [300], seed=4)[0]
    diff = np.abs(runner.prompt_logits(ids) - hf_logits(hf_model(path), ids)).max()
    assert diff <= 1e-3


def _custom_checkpoint(tmp_path, config) -> str:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(
                    torch.randn_like(p)
                    / p.shape[-1] ** 0.5
                    * (3.0 if "embed" in name or "lm_head" in name else 1.0)
                )
    path = os.path.join(tmp_path, config.model_type)
    model.save_pretrained(path, safe_serialization=True)
    return path


def test_qwen3_head_dim_differs_from_hidden_over_heads(tmp_path) -> None:
    cfg = transformers.Qwen3Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )
    path = _custom_checkpoint(tmp_path, cfg)
    runner = make_runner(path)
    ids = prompts(512, [50], seed=5)[0]
    model = hf_model(path)
    assert np.abs(runner.prompt_logits(ids) - hf_logits(model, ids)).max() <= 1e-3
    assert run_requests(runner, [ids], GREEDY32, token_budget=16) == [hf_greedy(model, ids, 32)]


def test_biases_everywhere_ernie_linear_rope(tmp_path) -> None:
    """ERNIE use_bias puts a bias on every projection (o_proj and MLP too)."""
    cfg = transformers.Ernie4_5Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        use_bias=True,
        tie_word_embeddings=False,
    )
    path = _custom_checkpoint(tmp_path, cfg)
    runner = make_runner(path)
    ids = prompts(512, [40], seed=6)[0]
    assert np.abs(runner.prompt_logits(ids) - hf_logits(hf_model(path), ids)).max() <= 1e-3


def test_linear_rope_scaling(tmp_path) -> None:
    cfg = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        rope_scaling={"rope_type": "linear", "factor": 4.0},
        rope_theta=10000.0,
    )
    path = _custom_checkpoint(tmp_path, cfg)
    runner = make_runner(path)
    info = runner.info
    assert info.rope_scaling and info.rope_scaling.get("rope_type") == "linear"
    ids = prompts(512, [120], seed=7)[0]
    assert np.abs(runner.prompt_logits(ids) - hf_logits(hf_model(path), ids)).max() <= 1e-3


def test_prefill_query_tiles(tiny_checkpoint, monkeypatch) -> None:
    """Long prompts attend in query tiles; force many small ones and compare with the reference."""
    from paddlellm.layers import attention

    monkeypatch.setattr(attention, "TILE_ELEMENTS", 4 * 2 * 2 * 100)
    path = tiny_checkpoint(arch="qwen2", tokenizer="llama2", tie=True)
    runner = make_runner(path)
    ids = prompts(runner.info.vocab_size, [150], seed=8)[0]
    assert np.abs(runner.prompt_logits(ids) - hf_logits(hf_model(path), ids)).max() <= 1e-3
