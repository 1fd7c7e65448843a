"""Write a small random-weight Qwen2.5-VL checkpoint in the Hub's layout, with transformers' own classes.

    python -m scripts.make_tiny_vl_model --out DIR [--seed N] [--smollm-dir DIR] [--size tiny|small]

`--size small` (benchmarks, not tests): the text decoder has the default model's dimensions (hidden 576,
30 layers, 9 heads (3 KV), head_dim 64, M-RoPE sections (8, 12, 12)) and the vision tower Qwen2.5-VL-3B's
(32 blocks of hidden 1280, 16 heads, full attention at 7, 15, 23, 31, window 112 px), ~0.8 G parameters, so
per-step costs compare as they would on a deployed small VL model. `--size tiny` (the default, tests):
Text decoder: hidden 64, 2 layers, 4 heads (2 KV), M-RoPE sections (2, 3, 3); vision tower: 4 blocks of
hidden 32 (2 heads), full attention at blocks 1 and 3, window 56 px (2 x 2 merged tokens, so small test
images already span several windows), patch 14, merge 2, output 64. Weights as in make_tiny_model.py:
linear ~ N(0, 1/fan_in) (the patch Conv3d's fan-in is C*T*P*P), norms around 1, biases small but non-zero.
The tokenizer is the default model's byte-level BPE plus Qwen's vision tokens (<|vision_start|>,
<|vision_end|>, <|image_pad|>, <|video_pad|>) as added special tokens; the chat template renders an image
part (`{"type": "image"}` or `{"type": "image_url"}`) as <|vision_start|><|image_pad|><|vision_end|>, as
Qwen2.5-VL's does, and the processor (or the tokenizer model) expands each <|image_pad|> to the image's
token count. config.json is written flat, as Hub checkpoints are (`rope_scaling: {"type": "mrope"}`);
preprocessor_config.json bounds images to 28*28*256 pixels (256 merged tokens) to keep tests small.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
MROPE_SECTION = [2, 3, 3]
# The two sizes: text decoder and vision tower dimensions (see the docstring).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, mrope_section=MROPE_SECTION),
        "vision": dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56,
                       fullatt_block_indexes=[1, 3]),
    },
    "small": {
        "text": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, mrope_section=[8, 12, 12]),
        "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31]),
    },
}  # fmt: skip
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' or 'image' in part %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "min_pixels": 56 * 56,
    "max_pixels": 28 * 28 * 256,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}


def write_tokenizer(out: str, smollm_dir: str) -> dict[str, int]:
    """The default model's tokenizer plus the vision tokens; returns their ids."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(os.path.join(smollm_dir, "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS])
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(smollm_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.pop("added_tokens_decoder", None)  # tokenizer.json holds them all
    config["chat_template"] = VL_CHAT_TEMPLATE
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    return {t: tok.token_to_id(t) for t in VISION_TOKENS}


def build_config(vocab: int, ids: dict[str, int], eos: int, bos: int | None, size: str = "tiny") -> Any:
    from transformers import Qwen2_5_VLConfig

    text = dict(SIZES[size]["text"])
    mrope_section = text.pop("mrope_section")
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab,
            **text,
            max_position_embeddings=2048,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "mrope_section": mrope_section, "rope_theta": 1000000.0},
            bos_token_id=bos,
            eos_token_id=eos,
        ),
        vision_config=dict(
            **SIZES[size]["vision"],
            out_hidden_size=text["hidden_size"],
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def randomize(model: Any, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    logit_std = 3.0 / math.sqrt(model.config.text_config.hidden_size)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("lm_head.weight"):
                p.copy_(noise * logit_std)
            elif name.endswith("embed_tokens.weight"):
                p.copy_(noise)
            elif name.endswith("bias"):
                p.copy_(noise * 0.1)
            elif p.dim() == 1:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))


def _flatten_config(out: str) -> None:
    """Rewrite transformers 5's nested config.json in the Hub's flat layout (what real checkpoints carry)."""
    path = os.path.join(out, "config.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    text = data.pop("text_config")
    rope = text.pop("rope_parameters")
    for key in ("model_type", "layer_types", "dtype"):
        text.pop(key, None)
    data.update(text)
    data["rope_theta"] = rope["rope_theta"]
    data["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    data["torch_dtype"] = "float32"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def make_tiny_vl_model(out: str, smollm_dir: str | None = None, seed: int = 0, size: str = "tiny") -> str:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    if size not in SIZES:
        raise ValueError(f"size {size!r}: one of {', '.join(SIZES)}")
    if os.path.isfile(os.path.join(out, "config.json")):
        raise FileExistsError(f"{out}: already holds a checkpoint")
    os.makedirs(out, exist_ok=True)
    if smollm_dir is None:
        from paddlellm.tools.default_model import default_dest

        smollm_dir = default_dest()
    ids = write_tokenizer(out, smollm_dir)
    with open(os.path.join(smollm_dir, "generation_config.json"), encoding="utf-8") as f:
        gen = json.load(f)
    vocab = max(ids.values()) + 1
    config = build_config(vocab, ids, gen["eos_token_id"], gen.get("bos_token_id"), size)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    randomize(model, seed)
    model.save_pretrained(out, safe_serialization=True)
    os.chmod(os.path.join(out, "model.safetensors"), 0o644)  # safetensors writes owner-only files
    _flatten_config(out)
    generation = {k: gen.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    with open(os.path.join(out, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({**generation, "do_sample": False}, f, indent=2)
    with open(os.path.join(out, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(PREPROCESSOR, f, indent=2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.make_tiny_vl_model", description="Write a small random-weight Qwen2.5-VL."
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smollm-dir", default=None, help="converted default model (its tokenizer is reused)"
    )
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="tiny", help="tiny (tests) or small (benchmarks)"
    )
    args = parser.parse_args(argv)
    try:
        make_tiny_vl_model(args.out, args.smollm_dir, args.seed, args.size)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
