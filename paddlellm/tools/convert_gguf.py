"""Convert a llama-architecture GGUF file into an HF-layout checkpoint directory (fp32 safetensors).

    python -m paddlellm.tools.convert_gguf SRC.gguf OUT_DIR

Writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json and generation_config.json.
The `gguf` package reads the file and dequantizes every tensor to float32 (numpy); llama.cpp's q/k row
permutation is undone so the weights use HF's rotate-half rotary layout. The directory is written under a
temporary name and renamed into place, so a crash never leaves a half-written OUT_DIR behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from paddlellm.errors import CheckpointError
from paddlellm.quant_blocks import BLOCKS_FILE, KINDS, BlockQuantized, read_gguf_blocks, save_blocks
from paddlellm.tools.gguf_tokenizer import PRE_TOKENIZERS, build_tokenizer_config, build_tokenizer_json

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.").
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

OUTPUT_FILES = (
    "config.json",
    "model.safetensors",
    BLOCKS_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)


@dataclass(frozen=True)
class GGUFModel:
    """The metadata a conversion needs, validated."""

    path: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    context_length: int
    vocab_size: int
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    pre_tokenizer: str
    bos_token_id: int | None
    eos_token_id: int | None
    unk_token_id: int | None
    pad_token_id: int | None
    add_bos_token: bool
    chat_template: str | None
    name: str


def _field(reader: Any, path: str, key: str, kind: type, required: bool = True) -> Any:
    """One metadata value, type-checked; the error names the file and the key."""
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise CheckpointError(path, key, "missing")
        return None
    try:
        value = field.contents()
    except Exception as e:  # the gguf package raises assorted errors on corrupt fields
        raise CheckpointError(path, key, f"unreadable: {e}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is list:
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        raise CheckpointError(path, key, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def read_model(reader: Any, path: str) -> GGUFModel:
    """Validate the metadata of an opened GGUFReader."""
    arch = _field(reader, path, "general.architecture", str)
    if arch != "llama":
        raise CheckpointError(path, "general.architecture", f"'{arch}' is not supported (only 'llama')")
    tok_model = _field(reader, path, "tokenizer.ggml.model", str)
    if tok_model != "gpt2":
        raise CheckpointError(
            path, "tokenizer.ggml.model", f"'{tok_model}' is not supported (only byte-level BPE 'gpt2')"
        )
    pre = _field(reader, path, "tokenizer.ggml.pre", str, required=False) or "default"
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(
            path,
            "tokenizer.ggml.pre",
            f"'{pre}' is not supported (supported: {', '.join(sorted(PRE_TOKENIZERS))})",
        )
    scaling = _field(reader, path, "llama.rope.scaling.type", str, required=False)
    if scaling not in (None, "none"):
        raise CheckpointError(path, "llama.rope.scaling.type", f"rope scaling '{scaling}' is not supported")

    hidden = _field(reader, path, "llama.embedding_length", int)
    heads = _field(reader, path, "llama.attention.head_count", int)
    kv_heads = _field(reader, path, "llama.attention.head_count_kv", int, required=False) or heads
    if heads <= 0 or hidden % heads:
        raise CheckpointError(path, "llama.attention.head_count", f"{heads} does not divide {hidden}")
    if kv_heads <= 0 or heads % kv_heads:
        raise CheckpointError(path, "llama.attention.head_count_kv", f"{kv_heads} does not divide {heads}")
    head_dim = _field(reader, path, "llama.attention.key_length", int, required=False) or hidden // heads
    rope_dim = _field(reader, path, "llama.rope.dimension_count", int, required=False) or head_dim
    if rope_dim != head_dim:
        raise CheckpointError(
            path, "llama.rope.dimension_count", f"partial rotary ({rope_dim} of {head_dim}) is not supported"
        )
    tokens = _field(reader, path, "tokenizer.ggml.tokens", list)
    types = _field(reader, path, "tokenizer.ggml.token_type", list, required=False) or [1] * len(tokens)
    if len(types) != len(tokens):
        raise CheckpointError(
            path, "tokenizer.ggml.token_type", f"{len(types)} entries for {len(tokens)} tokens"
        )
    vocab = _field(reader, path, "llama.vocab_size", int, required=False) or len(tokens)
    if vocab != len(tokens):
        raise CheckpointError(path, "llama.vocab_size", f"{vocab} but the file lists {len(tokens)} tokens")

    def token_id(key: str) -> int | None:
        value = _field(reader, path, key, int, required=False)
        if value is not None and not 0 <= value < len(tokens):
            raise CheckpointError(path, key, f"token id {value} is outside the vocabulary")
        return value

    add_bos = _field(reader, path, "tokenizer.ggml.add_bos_token", bool, required=False)
    return GGUFModel(
        path=path,
        hidden_size=hidden,
        intermediate_size=_field(reader, path, "llama.feed_forward_length", int),
        num_layers=_field(reader, path, "llama.block_count", int),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=_field(reader, path, "llama.attention.layer_norm_rms_epsilon", float),
        rope_theta=_field(reader, path, "llama.rope.freq_base", float, required=False) or 10000.0,
        context_length=_field(reader, path, "llama.context_length", int),
        vocab_size=vocab,
        tokens=tuple(tokens),
        token_types=tuple(int(t) for t in types),
        merges=tuple(_field(reader, path, "tokenizer.ggml.merges", list)),
        pre_tokenizer=PRE_TOKENIZERS[pre],
        bos_token_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id=token_id("tokenizer.ggml.eos_token_id"),
        unk_token_id=token_id("tokenizer.ggml.unknown_token_id"),
        pad_token_id=token_id("tokenizer.ggml.padding_token_id"),
        add_bos_token=bool(add_bos) if add_bos is not None else False,
        chat_template=_field(reader, path, "tokenizer.chat_template", str, required=False),
        name=_field(reader, path, "general.name", str, required=False) or "",
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation.

    llama.cpp's converter rewrites each head's rows from HF's rotate-half order (first half, second half)
    to interleaved pairs: rows reshape (n_head, 2, d/2) -> swap the last two axes. The inverse reads the
    rows as (n_head, d/2, 2) and swaps back.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_blocks(reader: Any, model: GGUFModel) -> dict[str, BlockQuantized]:
    """The Q8_0 / Q4_0 / Q4_1 tensors as stored (HF names, q/k rows un-permuted like the fp32 copy): what
    --quantization wint8 / wint4 run as is, with no second rounding."""
    out: dict[str, BlockQuantized] = {}
    for t in reader.tensors:
        kind = t.tensor_type.name.lower()
        if kind not in KINDS:
            continue
        name, layer = _hf_name(model.path, t.name, model.num_layers)
        rows, cols = (int(d) for d in reversed(t.shape.tolist()))
        try:
            blocks = read_gguf_blocks(kind, t.data, rows, cols)
        except ValueError as e:
            raise CheckpointError(model.path, t.name, str(e)) from None
        key = name if layer is None else name.split(".", 3)[3]
        heads = {"self_attn.q_proj.weight": model.num_heads, "self_attn.k_proj.weight": model.num_kv_heads}
        if key in heads:
            order = unpermute_qk(np.arange(rows), heads[key])
            blocks = blocks.permute_rows(order)
        out[name] = blocks
    return out


def read_tensors(reader: Any, model: GGUFModel) -> dict[str, np.ndarray]:
    """All tensors, dequantized to float32 under HF names, with q/k rows un-permuted."""
    from gguf.quants import dequantize

    q_rows = model.num_heads * model.head_dim
    kv_rows = model.num_kv_heads * model.head_dim
    expected = {
        "model.embed_tokens.weight": (model.vocab_size, model.hidden_size),
        "lm_head.weight": (model.vocab_size, model.hidden_size),
        "model.norm.weight": (model.hidden_size,),
        "input_layernorm.weight": (model.hidden_size,),
        "post_attention_layernorm.weight": (model.hidden_size,),
        "self_attn.q_proj.weight": (q_rows, model.hidden_size),
        "self_attn.k_proj.weight": (kv_rows, model.hidden_size),
        "self_attn.v_proj.weight": (kv_rows, model.hidden_size),
        "self_attn.o_proj.weight": (model.hidden_size, q_rows),
        "mlp.gate_proj.weight": (model.intermediate_size, model.hidden_size),
        "mlp.up_proj.weight": (model.intermediate_size, model.hidden_size),
        "mlp.down_proj.weight": (model.hidden_size, model.intermediate_size),
    }
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name, layer = _hf_name(model.path, t.name, model.num_layers)
        # GGUF lists dims fastest-first; numpy (and HF) want them slowest-first.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(
                model.path, t.name, f"cannot dequantize {t.tensor_type.name}: {e}"
            ) from None
        key = name if layer is None else name.split(".", 3)[3]
        if shape != expected[key]:
            raise CheckpointError(model.path, t.name, f"shape {shape}, expected {expected[key]}")
        if key == "self_attn.q_proj.weight":
            w = unpermute_qk(w, model.num_heads)
        elif key == "self_attn.k_proj.weight":
            w = unpermute_qk(w, model.num_kv_heads)
        out[name] = np.ascontiguousarray(w)
    required = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{n}" for i in range(model.num_layers) for n in _LAYER_TENSORS.values()
    ]
    for name in required:
        if name not in out:
            raise CheckpointError(model.path, name, "tensor missing")
    return out


def _hf_name(path: str, gguf_name: str, num_layers: int) -> tuple[str, int | None]:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name], None
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        layer = int(parts[1])
        if layer >= num_layers:
            raise CheckpointError(path, gguf_name, f"layer {layer} but llama.block_count is {num_layers}")
        return f"model.layers.{layer}.{_LAYER_TENSORS[parts[2]]}", layer
    raise CheckpointError(path, gguf_name, "unexpected tensor for a llama model")


def build_config(model: GGUFModel, tied: bool) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": model.hidden_size,
        "intermediate_size": model.intermediate_size,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.num_kv_heads,
        "head_dim": model.head_dim,
        "rms_norm_eps": model.rms_norm_eps,
        "rope_theta": model.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": model.context_length,
        "vocab_size": model.vocab_size,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": model.bos_token_id,
        "eos_token_id": model.eos_token_id,
        "pad_token_id": model.pad_token_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def convert(src: str, out_dir: str, sampling_defaults: dict[str, float] | None = None) -> None:
    """Convert SRC (.gguf) into OUT_DIR; OUT_DIR must not exist yet or be empty. `sampling_defaults`
    (e.g. the model card's temperature/top_p) go into generation_config.json, where servers read them."""
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    if not os.path.isfile(src):
        raise CheckpointError(src, "(file)", "not found")
    try:
        reader = GGUFReader(src)
    except Exception as e:  # bad magic, truncated header, ...
        raise CheckpointError(src, "(header)", f"not a readable GGUF file: {e}") from None
    model = read_model(reader, src)
    tensors = read_tensors(reader, model)
    tied = "lm_head.weight" not in tensors
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise CheckpointError(out_dir, "(directory)", "exists and is not empty")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        del tensors
        save_blocks(os.path.join(tmp, BLOCKS_FILE), read_blocks(reader, model))
        with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(build_tokenizer_json(model))
        generation = {
            "bos_token_id": model.bos_token_id,
            "eos_token_id": model.eos_token_id,
            "pad_token_id": model.pad_token_id,
            **(sampling_defaults or {}),
        }
        for name, data in (
            ("config.json", build_config(model, tied)),
            ("tokenizer_config.json", build_tokenizer_config(model)),
            ("generation_config.json", generation),
        ):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, ensure_ascii=False)
                f.write("\n")
        # mkdtemp and safetensors create owner-only entries; a model dir is meant to be shared.
        for root, _, files in os.walk(tmp):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete(out_dir: str) -> bool:
    """True when OUT_DIR holds every file a conversion writes."""
    return all(os.path.isfile(os.path.join(out_dir, f)) for f in OUTPUT_FILES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paddlellm.tools.convert_gguf", description=__doc__.split("\n")[0]
    )
    parser.add_argument("src", help="the .gguf file")
    parser.add_argument("out_dir", help="the HF-layout directory to write (must not exist or be empty)")
    parser.add_argument(
        "--if-missing", action="store_true", help="do nothing when OUT_DIR is already complete"
    )
    args = parser.parse_args(argv)
    if args.if_missing and is_complete(args.out_dir):
        print(f"{args.out_dir}: already converted")
        return 0
    try:
        convert(args.src, args.out_dir)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
