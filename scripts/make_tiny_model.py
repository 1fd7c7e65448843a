"""Write a small random-weight checkpoint in HF layout, built with transformers' own config and model classes.

    python -m scripts.make_tiny_model --arch MODEL_TYPE --out DIR
        [--tokenizer {smollm,llama2}] [--size {tiny,15m,100m}] [--tie/--no-tie] [--seed N]
        [--rope-scaling {none,llama3}] [--smollm-dir DIR]

--arch is any registered architecture's model_type (paddlellm/model_registry.py: llama, qwen2, ...); the
config and model classes are transformers' own for that model_type. Needs torch and transformers (test-only
dependencies). Weights are re-initialised from the seed so that logits are far from uniform (std ~3) and
every layer matters: linear weights ~ N(0, 1/fan_in), norm weights around 1, biases small but non-zero.
The vocabulary is sized to the tokenizer: SmolLM2's byte-level BPE (copied from the converted default model)
or Llama 2's SentencePiece byte-fallback BPE (built from ../shared/models/llama2-tokenizer/tokenizer.model
beside the repository).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any

from paddlellm.model_registry import ARCHITECTURES

# The team's shared test data sits beside the repository (CI clones it with ../shared next to it).
LLAMA2_SPM = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    os.pardir, "shared", "models", "llama2-tokenizer", "tokenizer.model",
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# hidden, intermediate, layers, heads, kv heads: GQA everywhere (2 query heads per kv head or more).
SIZES = {
    "tiny": (64, 128, 2, 4, 2),
    "15m": (256, 768, 6, 8, 4),
    "100m": (768, 2048, 10, 12, 4),
}
ARCHS = tuple(spec.model_type for spec in ARCHITECTURES)
ROPE_THETA = {"qwen2": 1000000.0, "qwen3": 1000000.0, "ernie4_5": 500000.0}  # the rest: 10000
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}
MAX_POSITIONS = 2048
# Config arguments beyond the shared ones, per model_type: switch off what the engine does not run.
EXTRA_CONFIG: dict[str, dict[str, Any]] = {
    "qwen2": {"use_sliding_window": False},
    "qwen3": {"use_sliding_window": False},
    "ernie4_5": {"use_bias": False},
    "mistral": {"sliding_window": MAX_POSITIONS},  # Mistral 7B v0.1 style, as long as the context: harmless
}


@dataclass(frozen=True)
class TinySpec:
    arch: str = "llama"
    tokenizer: str = "smollm"
    size: str = "tiny"
    tie: bool = True
    seed: int = 0
    rope_scaling: str | None = None  # None or "llama3" (llama only)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not one of {ARCHS}")
        if self.tokenizer not in ("smollm", "llama2"):
            raise ValueError(f"tokenizer {self.tokenizer!r} is not 'smollm' or 'llama2'")
        if self.size not in SIZES:
            raise ValueError(f"size {self.size!r} is not one of {tuple(SIZES)}")
        if self.rope_scaling not in (None, "llama3"):
            raise ValueError(f"rope_scaling {self.rope_scaling!r} is not None or 'llama3'")
        if self.rope_scaling and self.arch != "llama":
            raise ValueError("rope_scaling 'llama3' is only offered for arch 'llama'")

    def dir_name(self) -> str:
        tie = "tied" if self.tie else "untied"
        rope = f"-{self.rope_scaling}" if self.rope_scaling else ""
        return f"{self.arch}-{self.tokenizer}-{self.size}-{tie}-s{self.seed}{rope}"


@dataclass(frozen=True)
class TokenizerFacts:
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int | None


def write_smollm_tokenizer(out: str, smollm_dir: str) -> TokenizerFacts:
    """Copy the default model's tokenizer (byte-level BPE, ChatML template with SmolLM's system prompt)."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(smollm_dir, name)
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{src}: missing; run scripts/setup_default_model.sh first")
        shutil.copyfile(src, os.path.join(out, name))
    with open(os.path.join(smollm_dir, "generation_config.json"), encoding="utf-8") as f:
        gen = json.load(f)
    with open(os.path.join(smollm_dir, "config.json"), encoding="utf-8") as f:
        vocab = json.load(f)["vocab_size"]
    return TokenizerFacts(vocab, gen.get("bos_token_id"), gen["eos_token_id"], gen.get("pad_token_id"))


def write_llama2_tokenizer(out: str, spm_file: str = LLAMA2_SPM) -> TokenizerFacts:
    """Llama 2's SentencePiece model as a tokenizer.json, built with transformers' LlamaTokenizer.

    transformers' own .model reader needs protobuf>=5, which tritonclient forbids, so the vocabulary and
    scores come from the sentencepiece library and the merges from transformers' generate_merges. The
    normalizer is then set to Llama 2's published form (prepend "▁", spaces -> "▁", no pre-tokenizer) because
    the Metaspace pre-tokenizer transformers picks drops sentencepiece's extra "▁" before a leading space.
    """
    import sentencepiece as spm
    from tokenizers import normalizers, processors
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    sp = spm.SentencePieceProcessor(model_file=spm_file)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = generate_merges(vocab, {p: sp.get_score(i) for i, p in enumerate(pieces)})
    tok = LlamaTokenizer(vocab=vocab, merges=merges)
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    bos, eos = sp.bos_id(), sp.eos_id()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    backend.save(os.path.join(out, "tokenizer.json"))
    config = {
        # The generic class: transformers then loads tokenizer.json as written instead of rebuilding it.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "chat_template": CHATML_TEMPLATE,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    return TokenizerFacts(len(pieces), bos, eos, None)


def build_config(spec: TinySpec, tok: TokenizerFacts) -> Any:
    import transformers

    hidden, inter, layers, heads, kv_heads = SIZES[spec.size]
    common: dict[str, Any] = dict(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        tie_word_embeddings=spec.tie,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_theta=ROPE_THETA.get(spec.arch, 10000.0),
    )
    if spec.rope_scaling == "llama3":
        common["rope_scaling"] = dict(LLAMA3_SCALING)
    return transformers.AutoConfig.for_model(spec.arch, **common, **EXTRA_CONFIG.get(spec.arch, {}))


def randomize(model: Any, seed: int, hidden: int) -> None:
    """Deterministic, well-scaled weights (see the module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    logit_std = 3.0 / math.sqrt(hidden)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("embed_tokens.weight"):
                tied = model.config.tie_word_embeddings
                p.copy_(noise * (logit_std if tied else 1.0))
            elif name.endswith("lm_head.weight"):
                p.copy_(noise * logit_std)
            elif name.endswith("bias"):
                p.copy_(noise * 0.1)
            elif p.dim() == 1:  # RMSNorm weights (input, post-attention, final, q/k norms)
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[1]))


def make_tiny_model(spec: TinySpec, out: str, smollm_dir: str | None = None) -> str:
    """Write the checkpoint described by spec into out (created; must not hold a checkpoint yet)."""
    import torch
    import transformers

    if os.path.isfile(os.path.join(out, "config.json")):
        raise FileExistsError(f"{out}: already holds a checkpoint")
    os.makedirs(out, exist_ok=True)
    if spec.tokenizer == "smollm":
        from paddlellm.tools.default_model import default_dest

        tok = write_smollm_tokenizer(out, smollm_dir or default_dest())
    else:
        tok = write_llama2_tokenizer(out)
    config = build_config(spec, tok)
    torch.manual_seed(spec.seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.float32)
    randomize(model, spec.seed, config.hidden_size)
    model.save_pretrained(out, safe_serialization=True)
    os.chmod(os.path.join(out, "model.safetensors"), 0o644)  # safetensors writes owner-only files
    _write_legacy_config_fields(out, config, spec)
    generation = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "do_sample": False,
    }
    with open(os.path.join(out, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(generation, f, indent=2)
    return out


def _write_legacy_config_fields(out: str, config: Any, spec: TinySpec) -> None:
    """Add the pre-v5 keys (rope_theta, rope_scaling, torch_dtype) most checkpoints in the wild carry.

    transformers 5 writes only `rope_parameters`; readers of real checkpoints expect the older keys too.
    """
    path = os.path.join(out, "config.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["rope_theta"] = ROPE_THETA.get(spec.arch, 10000.0)
    data["rope_scaling"] = dict(LLAMA3_SCALING) if spec.rope_scaling == "llama3" else None
    data["torch_dtype"] = "float32"
    data["head_dim"] = config.head_dim
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.make_tiny_model",
        description="Write a small random-weight HF checkpoint.",
    )
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tokenizer", default="smollm", choices=("smollm", "llama2"))
    parser.add_argument("--size", default="tiny", choices=tuple(SIZES))
    parser.add_argument(
        "--tie",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tie the output head to the embedding (default: tied)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rope-scaling", default="none", choices=("none", "llama3"))
    parser.add_argument("--smollm-dir", default=None, help="converted default model (for --tokenizer smollm)")
    args = parser.parse_args(argv)
    try:
        spec = TinySpec(
            arch=args.arch,
            tokenizer=args.tokenizer,
            size=args.size,
            tie=args.tie,
            seed=args.seed,
            rope_scaling=None if args.rope_scaling == "none" else args.rope_scaling,
        )
        make_tiny_model(spec, args.out, args.smollm_dir)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
