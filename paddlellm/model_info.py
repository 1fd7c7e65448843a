"""ModelInfo and CheckpointText: every fact of an HF-layout checkpoint, read in one place.

`CheckpointText` holds the facts of the text side, readable from a tokenizer-only directory: the generation
config (stop ids, BOS, sampling defaults), the tokenizer config, and the chat template's source (and the
thinking markers it uses). `ModelInfo` adds the architecture from config.json and carries the `CheckpointText`
it was read with. The engine, the tokenizer model and the launcher all take these facts from here; nothing
else opens a checkpoint's JSON files.

Pure parsing (no paddle): the engine core sizes the KV cache and knows the stop ids from it; the Paddle model
code builds layers from it. A malformed or unsupported checkpoint fails here with the file and field.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

from paddlellm.errors import CheckpointError
from paddlellm.model_registry import VISION_LANGUAGE, ArchSpec, arch_spec, check_config, check_rope_scaling
from paddlellm.text.tool_prompt import ToolFormat, detect_tool_format


@dataclass(frozen=True)
class CheckpointText:
    """The text-side facts of a checkpoint directory (config.json optional)."""

    path: str
    generation_config: dict[str, Any]
    tokenizer_config: dict[str, Any]
    # Stop ids: generation_config.json's eos_token_id, else config.json's (what HF generate() stops on).
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    # chat_template.jinja wins over tokenizer_config.json's chat_template (a string, or a named list whose
    # "default" is used). `chat_template_origin` = (file, key) for error messages.
    chat_template: Any  # str, or None; anything else is the tokenizer's CheckpointError
    chat_template_origin: tuple[str, str]

    @classmethod
    def from_dir(cls, path: str, model_config: dict[str, Any] | None = None) -> CheckpointText:
        cfg = model_config
        if cfg is None:
            cfg = read_json_object(os.path.join(path, "config.json"))
        gen = read_json_object(os.path.join(path, "generation_config.json"))
        tok_file = os.path.join(path, "tokenizer_config.json")
        tok = read_json_object(tok_file)
        eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
        eos_list = eos if isinstance(eos, list) else [eos]
        bos = gen.get("bos_token_id", cfg.get("bos_token_id"))
        source, origin = _chat_template_source(path, tok, tok_file)
        return cls(
            path=path,
            generation_config=gen,
            tokenizer_config=tok,
            eos_token_ids=tuple(e for e in eos_list if isinstance(e, int) and not isinstance(e, bool)),
            bos_token_id=bos if isinstance(bos, int) and not isinstance(bos, bool) else None,
            chat_template=source,
            chat_template_origin=origin,
        )

    def sampling_defaults(self) -> dict[str, float]:
        """temperature / top_p from generation_config.json, as vLLM applies them to requests that give none
        (keys: `default_temperature`, `default_top_p`)."""
        out = {}
        for key in ("temperature", "top_p"):
            value = self.generation_config.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"default_{key}"] = float(value)
        if self.generation_config.get("do_sample") is False and "default_temperature" in out:
            out["default_temperature"] = 0.0  # HF: greedy unless sampling is asked for
        return out

    def reasoning_markers(self) -> tuple[str, str, bool] | None:
        """Thinking markers of the chat template, if it has them: (start, end, starts_inside).

        `starts_inside`: the generation prompt itself opens the block (DeepSeek-R1 style), so the output
        begins inside it."""
        template = self.chat_template if isinstance(self.chat_template, str) else ""
        if "<think>" not in template or "</think>" not in template:
            return None
        gen = template[template.rfind("add_generation_prompt") :]
        gen = re.split(r"\{%-?\s*endif", gen, maxsplit=1)[0]
        return "<think>", "</think>", "<think>" in gen and "</think>" not in gen

    def tool_format(self) -> ToolFormat:
        """The tool-call format the chat template teaches its model ("generic" without one): the launcher's
        default `--tool-call-parser` (paddlellm.text.tool_prompt.detect_tool_format says how)."""
        return detect_tool_format(self.chat_template if isinstance(self.chat_template, str) else None)


def _chat_template_source(path: str, tok: dict[str, Any], tok_file: str) -> tuple[Any, tuple[str, str]]:
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        try:
            with open(jinja_file, encoding="utf-8") as f:
                return f.read(), (jinja_file, "(file)")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(jinja_file, "(file)", f"unreadable: {e}") from None
    source = tok.get("chat_template")
    if isinstance(source, list):
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    return source, (tok_file, "chat_template")


@dataclass(frozen=True)
class VisionInfo:
    """What a vision-language checkpoint adds to its text decoder's facts (paddlellm/vision/vl_config.py has
    the rest: the tower's shape, M-RoPE sections)."""

    architecture: str  # config.json's, e.g. Qwen2_5_VLForConditionalGeneration
    image_token_id: int  # <|image_pad|>: one per image token in the prompt
    vision_start_token_id: int
    vision_end_token_id: int


@dataclass(frozen=True)
class ModelInfo:
    path: str  # checkpoint directory
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections carry a bias (ArchSpec.attention_bias / bias_key)
    qk_norm: bool  # per-head RMSNorm on q and k (ArchSpec.qk_norm)
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    raw_config: dict[str, Any]
    text: CheckpointText | None = field(default=None, compare=False, repr=False)  # None: built in tests
    # A vision-language checkpoint (issue #29): its text decoder is this ModelInfo; None: text only.
    vision: VisionInfo | None = None

    @property
    def spec(self) -> ArchSpec:
        """What the architecture differs in (model_registry.py); checked when read from config.json."""
        return arch_spec(self.architecture)

    def kv_bytes_per_token(self, dtype_bytes: int = 4, tp: int = 1) -> int:
        """K and V, all layers, for the heads one rank holds."""
        return 2 * self.num_layers * (self.num_kv_heads // tp) * self.head_dim * dtype_bytes

    @classmethod
    def from_dir(cls, path: str, max_model_len: int | None = None) -> ModelInfo:
        """Read config.json; an unsupported architecture or config feature raises UnsupportedModel (a
        ConfigError) naming it. `max_model_len`: the engine's limit (default: max_position_embeddings)."""
        cfg_file = os.path.join(path, "config.json")
        cfg = read_json_object(cfg_file, required=True)
        archs = cfg.get("architectures")
        if not isinstance(archs, list) or not archs:
            raise CheckpointError(cfg_file, "architectures", "missing or empty")
        arch = archs[0]
        if any(str(arch) in vl.architectures for vl in VISION_LANGUAGE):
            return _vision_language(path, cfg_file, max_model_len)
        spec = arch_spec(str(arch), cfg_file)

        def need(key: str, typ: type | tuple[type, ...], default: Any = None) -> Any:
            value = cfg.get(key, default)
            if value is None or isinstance(value, bool) or not isinstance(value, typ):
                raise CheckpointError(cfg_file, key, f"missing or not {typ}: {value!r}")
            return value

        hidden = need("hidden_size", int)
        heads = need("num_attention_heads", int)
        kv_heads = need("num_key_value_heads", int, heads)
        head_dim = cfg.get("head_dim") or hidden // heads
        if not isinstance(head_dim, int) or head_dim <= 0:
            raise CheckpointError(cfg_file, "head_dim", f"invalid: {head_dim!r}")
        if heads % kv_heads:
            raise CheckpointError(cfg_file, "num_key_value_heads",
                                  f"{kv_heads} does not divide {heads} heads")
        rope_scaling = cfg.get("rope_scaling")
        rope_theta = cfg.get("rope_theta", 10000.0)
        # transformers >= 5 writes `rope_parameters` (theta inside, "default" type for plain RoPE) instead.
        rope_params = cfg.get("rope_parameters")
        if isinstance(rope_params, dict):
            rope_theta = rope_params.get("rope_theta", rope_theta)
            if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
                rope_scaling = rope_params
        if rope_scaling is not None and not isinstance(rope_scaling, dict):
            raise CheckpointError(cfg_file, "rope_scaling", "must be an object or null")
        check_rope_scaling(spec, rope_scaling, cfg_file)
        max_positions = need("max_position_embeddings", int, 4096)
        if max_model_len is None:
            check_config(spec, cfg, cfg_file, max_positions, "max_position_embeddings")
        else:
            check_config(spec, cfg, cfg_file, max_model_len, "max_model_len")
        bias = spec.attention_bias or (spec.bias_key is not None and bool(cfg.get(spec.bias_key, False)))

        text = CheckpointText.from_dir(path, model_config=cfg)
        return cls(
            path=path,
            architecture=arch,
            vocab_size=need("vocab_size", int),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size", int),
            num_layers=need("num_hidden_layers", int),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(need("rms_norm_eps", (int, float), 1e-6)),
            rope_theta=_theta(cfg_file, rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=max_positions,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", spec.tie_default)),
            attention_bias=bias,
            qk_norm=spec.qk_norm,
            eos_token_ids=text.eos_token_ids,
            bos_token_id=text.bos_token_id,
            raw_config=cfg,
            text=text,
        )


def _vision_language(path: str, cfg_file: str, max_model_len: int | None) -> ModelInfo:
    """A vision-language checkpoint: its text decoder as the registered text architecture, with `vision`."""
    from paddlellm.vision.vl_config import VLConfig  # lazy: vl_config builds on this module

    vl = VLConfig.from_dir(path)
    text_spec = arch_spec(vl.spec.text_architecture, cfg_file)
    limit = max_model_len or vl.text_config.get("max_position_embeddings", 4096)
    name = "max_model_len" if max_model_len else "max_position_embeddings"
    check_config(text_spec, vl.text_config, cfg_file, limit, name)
    return vl.text_model_info()


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory, converting a .gguf file once into `<file>.hf/` beside it."""
    if os.path.isdir(path):
        return path
    if path.endswith(".gguf") and os.path.isfile(path):
        out = path + ".hf"
        from paddlellm.tools.convert_gguf import convert, is_complete  # lazy: only .gguf users need gguf

        if not is_complete(out):
            if os.path.isfile(os.path.join(out, "config.json")):
                shutil.rmtree(out)  # our own earlier conversion, from before a file was added to it
            convert(path, out)
        return out
    raise CheckpointError(path, "path", "not a checkpoint directory or a .gguf file")


def _theta(cfg_file: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(cfg_file, "rope_theta", f"not a number: {value!r}")
    return float(value)


def read_json_object(file: str, required: bool = False) -> dict[str, Any]:
    """A checkpoint JSON file's top-level object; {} when it is absent and not required."""
    if not os.path.isfile(file):
        if required:
            raise CheckpointError(file, "(file)", "not found")
        return {}
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(file, "(file)", f"unreadable JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(file, "(file)", "top level must be a JSON object")
    return data
