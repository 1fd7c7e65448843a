"""Tiny random checkpoints: load in transformers and ModelInfo, informative logits, seeded."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)

from safetensors.numpy import load_file  # noqa: E402

from paddlellm.model_info import ModelInfo  # noqa: E402
from scripts.make_tiny_model import (  # noqa: E402
    LLAMA2_SPM,
    SIZES,
    TinySpec,
    TokenizerFacts,
    build_config,
    main,
)

ARCH_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "ernie4_5": "Ernie4_5ForCausalLM",
}


def load(path: str):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("arch", list(ARCH_CLASSES))
def test_each_arch_loads_and_has_informative_logits(tiny_checkpoint, arch: str) -> None:
    path = tiny_checkpoint(arch)
    model = load(path)
    assert type(model).__name__ == ARCH_CLASSES[arch]
    cfg = model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert cfg.vocab_size == len(transformers.AutoTokenizer.from_pretrained(path))
    ids = torch.tensor([[1, 300, 400, 500, 600, 700, 800, 900]])
    with torch.no_grad():
        logits = model(ids).logits[0]
    assert 1.0 < logits.std(dim=-1).min().item() < 10.0  # neither uniform nor exploding
    top2 = logits.topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min().item() > 1e-3  # greedy decoding is not a coin toss
    # Attention matters: the last position's logits depend on earlier tokens.
    other = ids.clone()
    other[0, 1] = 1234
    with torch.no_grad():
        assert (model(other).logits[0, -1] - logits[-1]).abs().max().item() > 1e-2

    info = ModelInfo.from_dir(path)
    assert info.architecture == ARCH_CLASSES[arch]
    assert (info.vocab_size, info.num_heads, info.num_kv_heads) == (cfg.vocab_size, 4, 2)
    assert info.head_dim == 16 and info.tie_word_embeddings
    assert info.rope_theta == cfg.rope_parameters["rope_theta"]
    assert info.eos_token_ids == (2,)
    tcfg = json.load(open(os.path.join(path, "tokenizer_config.json")))
    assert "<|im_start|>" in tcfg["chat_template"]


def test_seed_determines_weights_and_untied_head_is_saved(tiny_checkpoint) -> None:
    a = load_file(os.path.join(tiny_checkpoint("llama", tie=False), "model.safetensors"))
    b = load_file(os.path.join(tiny_checkpoint("llama", tie=False, seed=0, size="tiny"), "model.safetensors"))
    c = load_file(os.path.join(tiny_checkpoint("llama", tie=False, seed=1), "model.safetensors"))
    assert "lm_head.weight" in a
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["lm_head.weight"], c["lm_head.weight"])
    tied = load_file(os.path.join(tiny_checkpoint("llama"), "model.safetensors"))
    assert "lm_head.weight" not in tied
    assert all(v.dtype == np.float32 for v in tied.values())


def test_rebuilding_gives_identical_bytes(tmp_path, default_model_dir) -> None:
    for out in ("a", "b"):
        args = [
            "--arch",
            "qwen3",
            "--out",
            str(tmp_path / out),
            "--seed",
            "7",
            "--smollm-dir",
            default_model_dir,
        ]
        assert main(args) == 0
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert main(["--arch", "qwen3", "--out", str(tmp_path / "a")]) == 2  # refuses to overwrite


def test_llama3_rope_scaling_variant(tiny_checkpoint) -> None:
    path = tiny_checkpoint("llama", rope_scaling="llama3")
    model = load(path)
    assert model.config.rope_parameters["rope_type"] == "llama3"
    info = ModelInfo.from_dir(path)
    assert info.rope_scaling is not None and info.rope_scaling["rope_type"] == "llama3"
    assert info.rope_scaling["original_max_position_embeddings"] < info.max_position_embeddings
    with pytest.raises(ValueError, match="llama3"):
        TinySpec(arch="qwen2", rope_scaling="llama3")


SP_TEXTS = [
    "Hello world",
    " leading space",
    "  two spaces\n\nnewline\tand tab",
    "你好，世界！中文测试",
    "emoji 😀🎉👍🏽 and 🇫🇷",
    "mixed 日本語 text 123 and résumé",
    "trailing space ",
    "",
]


def test_llama2_tokenizer_matches_sentencepiece_and_transformers(tiny_checkpoint) -> None:
    spm = pytest.importorskip("sentencepiece", exc_type=ModuleNotFoundError)
    sp = spm.SentencePieceProcessor(model_file=LLAMA2_SPM)
    path = tiny_checkpoint("llama", tokenizer="llama2")
    auto = transformers.AutoTokenizer.from_pretrained(path)
    assert len(auto) == sp.get_piece_size() == load(path).config.vocab_size
    for text in SP_TEXTS:
        assert auto.encode(text, add_special_tokens=False) == sp.encode(text), text
        assert auto.encode(text) == [sp.bos_id(), *sp.encode(text)], text
        assert auto.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    gen = json.load(open(os.path.join(path, "generation_config.json")))
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (1, 2)


@pytest.mark.parametrize(("size", "low", "high"), [("15m", 12e6, 20e6), ("100m", 85e6, 120e6)])
def test_larger_sizes_have_roughly_their_parameter_count(size: str, low: float, high: float) -> None:
    config = build_config(TinySpec(arch="llama", size=size), TokenizerFacts(49152, 1, 2, 2))
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert low < n < high, n
    assert config.num_key_value_heads < config.num_attention_heads
    assert SIZES[size][0] == config.hidden_size
