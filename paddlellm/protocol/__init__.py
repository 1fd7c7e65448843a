"""The wire contract between gateway, ensemble and its steps: tensor names, dtypes and shapes.

Every config.pbtxt is checked against these specs by a test, and the adapters and the gateway build and read
tensors by these names only. Also the error text convention: engine errors travel through Triton as a message
`[<ErrorClass> param=<param>] <message>` so the gateway can rebuild the OpenAI envelope with `param`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from paddlellm.errors import EngineDead, EngineError, InvalidRequest, Overloaded

# Triton config dtype -> numpy dtype string.
NUMPY_DTYPES = {"TYPE_STRING": "object", "TYPE_INT32": "int32", "TYPE_INT64": "int64", "TYPE_FP32": "float32",
                "TYPE_BOOL": "bool"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton config dtype, e.g. "TYPE_INT32"
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    decoupled: bool = False


def _s(name: str, dtype: str = "TYPE_STRING", dims: tuple[int, ...] = (1,)) -> TensorSpec:
    return TensorSpec(name, dtype, dims)


def _ids(name: str) -> TensorSpec:
    return TensorSpec(name, "TYPE_INT32", (-1,))


def _i1(name: str) -> TensorSpec:
    return TensorSpec(name, "TYPE_INT32", (1,))


def _optional(spec: TensorSpec) -> TensorSpec:
    return TensorSpec(spec.name, spec.dtype, spec.dims, optional=True)


# Ensemble inputs (what the gateway sends). `messages` is a JSON array of chat messages or "" (completions);
# `prompt` is the completion prompt or "" (chat); `sampling` is SamplingParams JSON ("" = defaults).
PROMPT, MESSAGES, SAMPLING = "prompt", "messages", "sampling"
# Optional, chat only: the OpenAI `tools` array as JSON ("" or absent = none). The tokenizer renders it into
# the prompt (paddlellm/text/tool_prompt.py); parsing calls out of the answer is the gateway's work.
TOOLS = "tools"
# Ids already streamed to the client by a run that was cut (another instance died): the engine continues as
# if it had generated them. Optional (absent or empty: a fresh request); the gateway always sends it.
RESUME_IDS = "resume_ids"
# Triton's LLM convention, the input names of Triton's vLLM backend (docs/triton.md), accepted besides ours:
# `text_input` is a raw prompt (as `prompt`), `sampling_parameters` vLLM's SamplingParams as JSON (values
# may be strings, as genai-perf sends them), `stream` false (its default) answers once at the end,
# `exclude_input_in_output` false (the default when not streaming) starts `text_output` with the prompt.
# The tokenizer step reads both conventions and hands the engine one canonical `sampling`.
TEXT_INPUT, STREAM, SAMPLING_PARAMETERS = "text_input", "stream", "sampling_parameters"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
# The vLLM backend's flag for its `logprobs` output: true asks for the chosen tokens' log-probabilities
# (SamplingParams.logprobs 0 when the sampling asked none); false or absent changes nothing.
RETURN_LOGPROBS = "return_logprobs"
# Engine outputs, one response per engine step that produced tokens for the request.
INPUT_IDS = "input_ids"
TOKEN_IDS = "token_ids"  # ids produced by this step
WINDOW_IDS = "window_ids"  # last few already-emitted ids followed by this step's ids (detokenizer context)
PREFIX_LEN = "prefix_len"  # how many of window_ids were already emitted
FINISH_REASON = "finish_reason"  # "" while running; "stop" | "length" | "abort" on the last response
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"  # cumulative generated tokens
CACHED_TOKENS = "cached_tokens"  # prompt tokens found in the prefix cache (usage.prompt_tokens_details)
ENGINE_STATS = "engine_stats"  # JSON with engine-side timings on the final response, "" otherwise
TEXT_OUTPUT = "text_output"
# "" when the request asked for no logprobs (SamplingParams.logprobs / prompt_logprobs); else JSON:
# {"content": [entry per token_ids id], "prompt": [null, entry, ...]} ("prompt" on the first response only),
# entry = {"id", "token", "bytes", "logprob", "rank", "top_logprobs": [{"id", "token", "bytes", "logprob"}]}.
# Straight from llm_engine to the ensemble's outputs (paddlellm/triton/logprobs_json.py, docs/triton.md).
LOGPROBS = "logprobs"
# Images (issue #29, with --enable-mm): the tokenizer decodes and preprocesses a chat's image parts and hands
# llm_engine, always (empty for a text-only request, so no ensemble tensor is ever missing):
# `pixel_values` FP32 [sum of patches, C*T*P*P] (all images in prompt order, paddlellm.vision's processor),
# `image_grid_thw` INT64 [images, 3] (t, h, w patches each), `image_hashes` STRING [images] (SHA-256 hex of
# an image's grid and pixel_values rows: what determines its embeddings; prefix-cache keys use it).
# Optional on llm_engine: a direct client of it sends none. docs/multimodal.md has the handoff.
PIXEL_VALUES, IMAGE_GRID_THW, IMAGE_HASHES = "pixel_values", "image_grid_thw", "image_hashes"
# A request to llm_engine carrying this request parameter (true) aborts the live request with the same
# request id instead of starting one. The detokenizer (and the gateway, when its client goes away) sends it,
# because Triton 2.51 never tells a decoupled ensemble step about cancellation (docs/triton-notes.md).
ABORT_PARAMETER = "paddlellm_abort"

def _bool(name: str) -> TensorSpec:
    return TensorSpec(name, "TYPE_BOOL", (1,))


IMAGE_TENSORS = (
    TensorSpec(PIXEL_VALUES, "TYPE_FP32", (-1, -1)),
    TensorSpec(IMAGE_GRID_THW, "TYPE_INT64", (-1, 3)),
    TensorSpec(IMAGE_HASHES, "TYPE_STRING", (-1,)),
)

# Every input is optional: a request uses one convention or the other (or mixes them, one prompt source and
# at most one sampling source); the tokenizer says which are missing or conflicting, naming them.
TOKENIZER = ModelSpec(
    "tokenizer",
    inputs=tuple(
        _optional(t)
        for t in (
            _s(PROMPT), _s(MESSAGES), _s(TOOLS), _s(SAMPLING),
            _s(TEXT_INPUT), _bool(STREAM), _s(SAMPLING_PARAMETERS), _bool(EXCLUDE_INPUT_IN_OUTPUT),
            _bool(RETURN_LOGPROBS),
        )
    ),
    # `sampling`: the request's SamplingParams as canonical JSON, whichever convention it came in.
    outputs=(_ids(INPUT_IDS), _s(SAMPLING), *IMAGE_TENSORS),
)
LLM_ENGINE = ModelSpec(
    "llm_engine",
    inputs=(_ids(INPUT_IDS), _s(SAMPLING), _optional(_ids(RESUME_IDS)), *map(_optional, IMAGE_TENSORS)),
    outputs=(_ids(TOKEN_IDS), _ids(WINDOW_IDS), _i1(PREFIX_LEN), _s(FINISH_REASON), _i1(PROMPT_TOKENS),
             _i1(COMPLETION_TOKENS), _s(ENGINE_STATS), _i1(CACHED_TOKENS), _s(LOGPROBS)),
    decoupled=True,
)
# The detokenizer is a pure function of one engine response's window: it turns ids into a text delta. Only the
# text goes through it (Triton runs it once per engine response, so every tensor it moves costs 32 copies
# per batch-32 step); the engine's other outputs go straight to the ensemble's outputs. Every ensemble
# output still descends from the one decoupled step, and Triton pairs them per engine response.
DETOKENIZER = ModelSpec(
    "detokenizer",
    inputs=(_ids(WINDOW_IDS), _i1(PREFIX_LEN), _s(FINISH_REASON)),
    outputs=(_s(TEXT_OUTPUT),),
)
ENSEMBLE = ModelSpec(
    "ensemble",
    inputs=(*TOKENIZER.inputs, _optional(_ids(RESUME_IDS))),
    outputs=(_s(TEXT_OUTPUT), _ids(TOKEN_IDS), _s(FINISH_REASON), _i1(PROMPT_TOKENS), _i1(COMPLETION_TOKENS),
             _s(ENGINE_STATS), _i1(CACHED_TOKENS), _s(LOGPROBS)),
    decoupled=True,
)
MODELS = (TOKENIZER, LLM_ENGINE, DETOKENIZER, ENSEMBLE)

# A param may hold brackets itself (`messages[2].tool_call_id`, `tools[0]`): it ends at the first "] ".
_ERR_RE = re.compile(r"\[(?P<kind>[A-Za-z]+) param=(?P<param>(?:[^\]]|\](?! ))*)\] (?P<msg>.*)", re.S)
_KINDS: dict[str, type[EngineError]] = {
    c.__name__: c for c in (EngineError, InvalidRequest, Overloaded, EngineDead)
}


def token_text(raw: bytes) -> str:
    """A token's bytes as the `token` of a logprobs entry: UTF-8, or `bytes:\\xe2\\x80` when they are not
    valid UTF-8 on their own (part of a character; OpenAI's and vLLM's convention)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def format_error(exc: EngineError) -> str:
    return f"[{type(exc).__name__} param={exc.param or ''}] {exc.message}"


def parse_error(text: str) -> EngineError | None:
    """Rebuild a typed error from a Triton error message (Triton may prefix it); None if not ours."""
    m = _ERR_RE.search(text)
    if not m:
        return None
    cls = _KINDS.get(m.group("kind"), EngineError)
    return cls(m.group("msg"), param=m.group("param") or None)
