"""Tensors <-> typed values for the three python models, by the names and dtypes in paddlellm/protocol/.

Readers raise InvalidRequest naming the tensor; writers build `pb.InferenceResponse`s. `pb` is the
triton_python_backend_utils module, passed in by the caller.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from paddlellm import protocol as p
from paddlellm.engine.outputs import RequestOutput
from paddlellm.errors import InvalidRequest
from paddlellm.protocol.vllm_convention import sampling_from_vllm
from paddlellm.sampling import SamplingParams
from paddlellm.vision.image_inputs import ImageInputs

# ------------------------------------------------------------------------------------------- readers


def _tensor(pb: Any, request: Any, name: str) -> np.ndarray:
    tensor = pb.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InvalidRequest(f"input tensor '{name}' is missing", param=name)
    return tensor.as_numpy()


def read_str(pb: Any, request: Any, name: str) -> str:
    arr = _tensor(pb, request, name).reshape(-1)
    if arr.size != 1:
        raise InvalidRequest(f"input tensor '{name}' must hold one string, got {arr.size}", param=name)
    value = arr[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"input tensor '{name}' is not valid UTF-8", param=name) from None
    return str(value)


def read_ids(pb: Any, request: Any, name: str) -> tuple[int, ...]:
    return tuple(_tensor(pb, request, name).reshape(-1).tolist())


def read_int(pb: Any, request: Any, name: str) -> int:
    arr = _tensor(pb, request, name).reshape(-1)
    if arr.size != 1:
        raise InvalidRequest(f"input tensor '{name}' must hold one integer, got {arr.size}", param=name)
    return int(arr[0])


def request_parameters(request: Any) -> dict[str, Any]:
    text = request.parameters()
    try:
        params = json.loads(text) if text else {}
    except ValueError:
        return {}
    return params if isinstance(params, dict) else {}


def is_abort(request: Any) -> bool:
    return request_parameters(request).get(p.ABORT_PARAMETER) is True


def _optional_str(pb: Any, request: Any, name: str) -> str | None:
    return None if pb.get_input_tensor_by_name(request, name) is None else read_str(pb, request, name)


def _optional_bool(pb: Any, request: Any, name: str) -> bool | None:
    tensor = pb.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    arr = tensor.as_numpy().reshape(-1)
    if arr.size != 1:
        raise InvalidRequest(f"input tensor '{name}' must hold one boolean, got {arr.size}", param=name)
    return bool(arr[0])


@dataclass(frozen=True)
class TokenizerInput:
    prompt: str
    messages: list[dict[str, Any]] | None  # None: a completion request (use `prompt`)
    sampling_params: SamplingParams
    prompt_param: str = p.PROMPT  # the input the prompt came from, named by errors about it
    tools: list[dict[str, Any]] | None = None  # OpenAI `tools` for the chat template (only with messages)


def read_tokenizer_input(pb: Any, request: Any) -> TokenizerInput:
    """Our inputs (`prompt`, or `messages` and optional `tools`; `sampling`) or Triton's vLLM-backend names
    (`text_input`, `sampling_parameters`, `stream`, `exclude_input_in_output`, `return_logprobs`); every input
    is optional. One prompt source and at most one sampling source; conflicts fail naming the input."""
    prompt = _optional_str(pb, request, p.PROMPT) or ""
    messages_json = _optional_str(pb, request, p.MESSAGES) or ""
    tools = _read_tools(_optional_str(pb, request, p.TOOLS) or "", has_messages=bool(messages_json))
    text_input = _optional_str(pb, request, p.TEXT_INPUT)
    if text_input is not None and (prompt or messages_json):
        raise InvalidRequest("send text_input or prompt/messages, not both", param=p.TEXT_INPUT)
    ours, vllm = _optional_str(pb, request, p.SAMPLING), _optional_str(pb, request, p.SAMPLING_PARAMETERS)
    if ours and vllm:
        raise InvalidRequest("send sampling or sampling_parameters, not both", param=p.SAMPLING_PARAMETERS)
    sampling_params = sampling_from_vllm(vllm) if vllm else SamplingParams.from_json(ours or "")
    # vLLM backend defaults when its names are used: no streaming, and then the prompt leads the text.
    stream = _optional_bool(pb, request, p.STREAM)
    if stream is None:
        stream = sampling_params.stream and text_input is None
    exclude = _optional_bool(pb, request, p.EXCLUDE_INPUT_IN_OUTPUT)
    echo = (
        (not exclude)
        if exclude is not None
        else (sampling_params.echo or (text_input is not None and not stream))
    )
    # return_logprobs true: at least the chosen token's logprob (no alternatives unless the sampling asks).
    logprobs = sampling_params.logprobs
    if logprobs is None and _optional_bool(pb, request, p.RETURN_LOGPROBS):
        logprobs = 0
    if (stream, echo, logprobs) != (sampling_params.stream, sampling_params.echo, sampling_params.logprobs):
        sampling_params = dataclasses.replace(sampling_params, stream=stream, echo=echo, logprobs=logprobs)
    if text_input is not None:
        return TokenizerInput(text_input, None, sampling_params, p.TEXT_INPUT)
    if not messages_json:
        return TokenizerInput(prompt, None, sampling_params)
    try:
        messages = json.loads(messages_json)
    except ValueError as e:
        raise InvalidRequest(f"'messages' is not valid JSON: {e}", param="messages") from None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("'messages' must be a JSON array of objects", param="messages")
    return TokenizerInput(prompt, messages, sampling_params, p.MESSAGES, tools)


def _read_tools(text: str, has_messages: bool) -> list[dict[str, Any]] | None:
    """The `tools` input: a JSON array ("" = none), meaningful with chat `messages` only. The tools' shape
    is checked where they are rendered (paddlellm.text.tool_prompt), naming e.g. `tools[0].function.name`."""
    if not text:
        return None
    if not has_messages:
        raise InvalidRequest("'tools' needs chat 'messages' (a prompt is used as it is)", param=p.TOOLS)
    try:
        tools = json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"'tools' is not valid JSON: {e}", param=p.TOOLS) from None
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a JSON array of tool objects", param=p.TOOLS)
    return tools


@dataclass(frozen=True)
class EngineInput:
    prompt_ids: tuple[int, ...]
    sampling_params: SamplingParams
    resume_ids: tuple[int, ...] = ()  # ids a cut run already streamed: continue after them
    images: ImageInputs | None = None  # None: a text-only request (no or empty image tensors)


def read_images(pb: Any, request: Any) -> ImageInputs | None:
    """The optional image tensors (the tokenizer always sends them, empty for text); None when no image."""
    names = (p.PIXEL_VALUES, p.IMAGE_GRID_THW, p.IMAGE_HASHES)
    tensors = [pb.get_input_tensor_by_name(request, n) for n in names]
    if all(t is None for t in tensors):
        return None
    if any(t is None for t in tensors):
        raise InvalidRequest(f"send all of {', '.join(names)} or none", param=p.PIXEL_VALUES)
    pixels, grid, hashes = (t.as_numpy() for t in tensors)
    digests = [h.decode("utf-8", "replace") if isinstance(h, bytes) else str(h) for h in hashes.reshape(-1)]
    images = ImageInputs.from_arrays(pixels, grid, digests, param=p.PIXEL_VALUES)
    return images if images else None


def read_engine_input(pb: Any, request: Any) -> EngineInput:
    ids = read_ids(pb, request, p.INPUT_IDS)
    if not ids:
        raise InvalidRequest("the prompt has no tokens", param=p.INPUT_IDS)
    # Optional: absent (Triton's LLM tools never send it) is a fresh request.
    resume = (
        ()
        if pb.get_input_tensor_by_name(request, p.RESUME_IDS) is None
        else read_ids(pb, request, p.RESUME_IDS)
    )
    sampling = SamplingParams.from_json(read_str(pb, request, p.SAMPLING))
    return EngineInput(ids, sampling, resume, read_images(pb, request))


@dataclass(frozen=True)
class DetokenizerInput:
    window_ids: tuple[int, ...]
    prefix_len: int
    finish_reason: str

    @property
    def finished(self) -> bool:
        return self.finish_reason != ""


def read_detokenizer_input(pb: Any, request: Any) -> DetokenizerInput:
    window = read_ids(pb, request, p.WINDOW_IDS)
    prefix_len = read_int(pb, request, p.PREFIX_LEN)
    if not 0 <= prefix_len <= len(window):
        raise InvalidRequest(
            f"prefix_len {prefix_len} is outside the window of {len(window)}", param=p.PREFIX_LEN
        )
    return DetokenizerInput(window, prefix_len, read_str(pb, request, p.FINISH_REASON))


# ------------------------------------------------------------------------------------------- writers


def _str_tensor(pb: Any, name: str, value: str) -> Any:
    return pb.Tensor(name, np.array([value.encode("utf-8")], dtype=np.object_))


def _ids_tensor(pb: Any, name: str, ids: Sequence[int]) -> Any:
    return pb.Tensor(name, np.asarray(ids, dtype=np.int32).reshape(-1))


def _int_tensor(pb: Any, name: str, value: int) -> Any:
    return pb.Tensor(name, np.array([value], dtype=np.int32))


def tokenizer_response(
    pb: Any, input_ids: Sequence[int], sampling_params: SamplingParams, images: ImageInputs | None = None
) -> Any:
    """The prompt's ids and the request's sampling, canonical whichever convention it came in, and the
    image tensors, always (empty without images: an ensemble step's outputs must all be there)."""
    images = images or ImageInputs.empty()
    return pb.InferenceResponse(
        output_tensors=[
            _ids_tensor(pb, p.INPUT_IDS, input_ids),
            _str_tensor(pb, p.SAMPLING, sampling_params.to_json()),
            pb.Tensor(p.PIXEL_VALUES, np.ascontiguousarray(images.pixel_values, dtype=np.float32)),
            pb.Tensor(p.IMAGE_GRID_THW, np.ascontiguousarray(images.grid_thw, dtype=np.int64)),
            pb.Tensor(p.IMAGE_HASHES, np.array([h.encode() for h in images.hashes], dtype=np.object_)),
        ]
    )


def engine_response(
    pb: Any,
    out: RequestOutput,
    context_ids: Sequence[int],
    engine_stats: str = "",
    echo_ids: Sequence[int] = (),
    logprobs: str = "",
) -> Any:
    """One engine step's output. `context_ids` are the last already-emitted ids the detokenizer needs
    in front of this step's ids (the window's prefix); `echo_ids` (the prompt, on an echoing request's first
    response) go out as text before them but are no output tokens; `logprobs` is the `logprobs` output's
    text (paddlellm/triton/logprobs_json.py; "" when the request asked none)."""
    window = tuple(context_ids) + tuple(echo_ids) + tuple(out.new_token_ids)
    reason = (out.finish_reason or "") if out.finished else ""
    return pb.InferenceResponse(
        output_tensors=[
            _ids_tensor(pb, p.TOKEN_IDS, out.new_token_ids),
            _ids_tensor(pb, p.WINDOW_IDS, window),
            _int_tensor(pb, p.PREFIX_LEN, len(context_ids)),
            _str_tensor(pb, p.FINISH_REASON, reason),
            _int_tensor(pb, p.PROMPT_TOKENS, out.num_prompt_tokens),
            _int_tensor(pb, p.COMPLETION_TOKENS, out.num_output_tokens),
            _str_tensor(pb, p.ENGINE_STATS, engine_stats),
            _int_tensor(pb, p.CACHED_TOKENS, out.num_cached_tokens),
            _str_tensor(pb, p.LOGPROBS, logprobs),
        ]
    )


def detokenizer_response(pb: Any, text: str) -> Any:
    """The text delta: the detokenizer's only output (the engine's other outputs bypass it)."""
    return pb.InferenceResponse(output_tensors=[_str_tensor(pb, p.TEXT_OUTPUT, text)])


def abort_request(pb: Any, request_id: str, engine_model: str = p.LLM_ENGINE.name) -> Any:
    """The BLS request that aborts `request_id` in the engine (inputs are required but unused)."""
    return pb.InferenceRequest(
        model_name=engine_model,
        requested_output_names=[],
        request_id=request_id,
        inputs=[
            _ids_tensor(pb, p.INPUT_IDS, []),
            _str_tensor(pb, p.SAMPLING, ""),
            _ids_tensor(pb, p.RESUME_IDS, []),
        ],
        parameters={p.ABORT_PARAMETER: True},
    )
