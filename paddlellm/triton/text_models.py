"""tokenizer and detokenizer logic (both plain, non-decoupled python models; one response per request).

The text work itself (chat template, encoding, the pure detokenize step) lives in paddlellm/text and is
injected, so these classes only translate tensors, enforce the length limit and turn errors into
responses. The detokenizer also carries cancellation to the engine: Triton cancels an ensemble's later
step requests but never its running decoupled step, so when a detokenizer request arrives cancelled it
sends the engine an abort request for the same request id (docs/triton-notes.md, "Cancellation"). Asking
`is_cancelled()` is an IPC round trip to tritonserver (the stub waited on it about as long as the rest of a
response's work took), so each stream is asked at its first response and then at most every CANCEL_POLL_S
(CancelPoll).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from paddlellm import protocol
from paddlellm.errors import ConfigError, InvalidRequest
from paddlellm.text.tool_prompt import TOOL_FORMATS, ToolFormat
from paddlellm.triton import adapter
from paddlellm.triton.error_responses import error_response
from paddlellm.triton.params import pick

log = logging.getLogger(__name__)

# How often the detokenizer asks one stream whether its client went away. The gateway aborts the engine
# itself when its client disconnects; this catches direct Triton clients, within this delay plus a step.
CANCEL_POLL_S = 0.25
# The tokenizer's parameter naming the tool-call format of the tools prompt (the launcher sets it from
# --tool-call-parser); optional, so a repository from before it still loads as AUTO.
TOOL_CALL_PARSER, AUTO = "tool_call_parser", "auto"


class PromptEncoder(Protocol):
    def __call__(
        self, prompt: str, messages: list[dict[str, Any]] | None, tools: list[dict[str, Any]] | None = None
    ) -> Sequence[int]:
        """Token ids of `prompt`, or of `messages` (and OpenAI `tools`) rendered with the chat template when
        `messages` is not None."""
        ...


DetokenizeStep = Callable[[Sequence[int], int, bool], str]
"""(window_ids, prefix_len, final) -> the text delta; a pure function (`paddlellm/text/incremental.py`)."""


class ImageParts(Protocol):
    """paddlellm.vision.chat_images.ChatImages: image parts out of the messages, placeholders expanded."""

    def extract(self, messages: list[dict[str, Any]]) -> Any: ...  # ChatImagesResult

    def expand(self, ids: Sequence[int], images: Sequence[Any]) -> list[int]: ...


class TokenizerModel:
    def __init__(
        self, pb: Any, encode: PromptEncoder, max_model_len: int, images: ImageParts | None = None
    ) -> None:
        """`images`: how image parts are handled (refused with their part's name when it has no config;
        None: not looked at, so the chat template's validation refuses them as non-text parts)."""
        self.pb = pb
        self.encode = encode
        self.max_model_len = max_model_len
        self.images = images

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return [self._one(r) for r in requests]

    def _one(self, request: Any) -> Any:
        try:
            inp = adapter.read_tokenizer_input(self.pb, request)
            messages, images = inp.messages, None
            if messages is not None and self.images is not None:
                found = self.images.extract(messages)  # decoded and preprocessed before the template
                messages, images = found.messages, found
            # `tools` only when sent: an encoder written before them (e.g. a test's) still serves the rest.
            if inp.tools is None:
                ids = self.encode(inp.prompt, messages)
            else:
                ids = self.encode(inp.prompt, messages, inp.tools)
            if images is not None and images.images:
                ids = self.images.expand(ids, images.images)  # type: ignore[union-attr]
            self._check_length(len(ids), inp.sampling_params.max_tokens, inp.prompt_param)
            return adapter.tokenizer_response(
                self.pb, ids, inp.sampling_params, images.inputs() if images is not None else None
            )
        except Exception as e:  # noqa: BLE001 - every failure becomes this request's error response
            return error_response(self.pb, e)

    def _check_length(self, n: int, max_tokens: int | None, param: str) -> None:
        if n == 0:
            raise InvalidRequest("the prompt is empty (it encodes to no tokens)", param=param)
        if n + (max_tokens or 1) > self.max_model_len:  # None: the rest of the context, at least 1
            raise InvalidRequest(
                f"prompt has {n} tokens; with max_tokens={max_tokens} that exceeds "
                f"max_model_len={self.max_model_len}",
                param=param,
            )


class CancelPoll:
    """When to ask a stream's request `is_cancelled()`: at its first response, then at most every
    `interval_s`. Only bookkeeping of when a request id was last asked (the text stays a pure function of
    the window); ids are forgotten at their final response, or after `forget_s` without one (a stream
    that ended in an error never shows its final response here)."""

    def __init__(
        self,
        interval_s: float = CANCEL_POLL_S,
        forget_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.forget_s = forget_s
        self.clock = clock
        self._next: dict[str, float] = {}  # request id -> when to ask again
        self._next_sweep = clock() + forget_s

    def due(self, request_id: str) -> bool:
        if not request_id:
            return False  # nothing to name the engine request by: an abort could not be sent anyway
        now = self.clock()
        if now < self._next.get(request_id, now):
            return False
        self._next[request_id] = now + self.interval_s
        if now >= self._next_sweep:
            self._next = {k: t for k, t in self._next.items() if t > now - self.forget_s}
            self._next_sweep = now + self.forget_s
        return True

    def forget(self, request_id: str) -> None:
        self._next.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._next)


class DetokenizerModel:
    """One text delta per engine response. Triton runs this once per response of every running request, so
    the per-request work is kept to reading the window, the pure detokenize step, one output tensor and,
    now and then, a cancellation check (CancelPoll)."""

    def __init__(
        self,
        pb: Any,
        step: DetokenizeStep,
        engine_model: str = protocol.LLM_ENGINE.name,
        cancel_poll: CancelPoll | None = None,
    ) -> None:
        self.pb = pb
        self.step = step
        self.engine_model = engine_model
        self.cancel_poll = cancel_poll if cancel_poll is not None else CancelPoll()

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return [self._one(r) for r in requests]

    def _one(self, request: Any) -> Any:
        request_id = request.request_id()
        if self.cancel_poll.due(request_id) and request.is_cancelled():
            # Answer normally all the same: an error response here leaves the cancelled ensemble request
            # in flight forever in Triton 2.51 (it then blocks shutdown until --exit-timeout-secs).
            self._abort_engine(request_id)
        try:
            inp = adapter.read_detokenizer_input(self.pb, request)
            if inp.finished:
                self.cancel_poll.forget(request_id)
            text = self.step(inp.window_ids, inp.prefix_len, inp.finished)
            return adapter.detokenizer_response(self.pb, text)
        except Exception as e:  # noqa: BLE001
            return error_response(self.pb, e)

    def _abort_engine(self, request_id: str) -> None:
        if not request_id:
            return  # nothing to name the engine request by; it runs to its max_tokens
        try:
            for response in adapter.abort_request(self.pb, request_id, self.engine_model).exec(
                decoupled=True
            ):
                if response.has_error():
                    log.warning("abort of %s failed: %s", request_id, response.error().message())
        except Exception:  # noqa: BLE001 - best effort: the engine's max_tokens still bounds the waste
            log.exception("could not send the abort for request %s", request_id)


# ------------------------------------------------------------------------------------------ factories


@dataclass(frozen=True)
class TextBackend:
    """The text functions the two models need, bound to one checkpoint's tokenizer."""

    encode: PromptEncoder
    detokenize: DetokenizeStep


def load_text_backend(model: str, tool_format: ToolFormat | None = None) -> TextBackend:
    """Bind paddlellm.text to the checkpoint `model` (a directory or a .gguf file): prompts are encoded with
    the tokenizer's special tokens (e.g. BOS), chat messages through the model's chat template. `tool_format`:
    the format the tools prompt asks for when the template has no tool support (None: from the template)."""
    # Lazy: tokenizers and jinja2 load only in these two models, not in everything importing this module.
    from paddlellm.model_info import resolve_checkpoint
    from paddlellm.text.incremental import detokenize_step
    from paddlellm.text.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_dir(resolve_checkpoint(model))

    def encode(
        prompt: str, messages: list[dict[str, Any]] | None, tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        if messages is None:
            return tokenizer.encode(prompt)
        return tokenizer.encode_chat(messages, tools=tools, tool_format=tool_format)

    def detokenize(window_ids: Sequence[int], prefix_len: int, final: bool) -> str:
        return detokenize_step(tokenizer, window_ids, prefix_len, final)

    return TextBackend(encode=encode, detokenize=detokenize)


def create_tokenizer_model(pb: Any, params: dict[str, str]) -> TokenizerModel:
    cfg = pick(params, "model", "max_model_len")
    try:
        max_model_len = int(cfg["max_model_len"])
    except ValueError:
        raise ConfigError(
            f"model parameter 'max_model_len': not an integer: {cfg['max_model_len']!r}"
        ) from None
    tool_format = tool_format_param(params.get(TOOL_CALL_PARSER, AUTO))
    encode = load_text_backend(cfg["model"], tool_format).encode
    return TokenizerModel(pb, encode, max_model_len, load_chat_images(cfg["model"], params))


def load_chat_images(model: str, params: dict[str, str]) -> ImageParts:
    """The image handling the `enable_mm` / `limit_mm_per_prompt` parameters ask for (optional, as
    llm_engine's: a repository from before them takes no images). --enable-mm with a checkpoint that is not
    a vision-language model fails here too, as in the launcher."""
    from paddlellm.config import EngineConfig
    from paddlellm.model_info import ModelInfo, resolve_checkpoint
    from paddlellm.vision.chat_images import ChatImageConfig, ChatImages
    from paddlellm.vision.image_config import ImageProcessorConfig

    keys = ("enable_mm", "limit_mm_per_prompt")
    engine = EngineConfig.from_params({k: params[k] for k in keys if k in params})
    if not engine.enable_mm:
        return ChatImages(None)
    path = resolve_checkpoint(model)
    vision = ModelInfo.from_dir(path).vision
    if vision is None:
        raise ConfigError(f"enable_mm: {model} is not a vision-language checkpoint (images need one)")
    processor = ImageProcessorConfig.from_dir(path)
    return ChatImages(ChatImageConfig(processor, vision.image_token_id, engine.image_limit))


def tool_format_param(value: str) -> ToolFormat | None:
    """The `tool_call_parser` parameter: AUTO (None: the format the chat template shows) or a ToolFormat."""
    if value == AUTO:
        return None
    for fmt in TOOL_FORMATS:
        if value == fmt:
            return fmt
    raise ConfigError(
        f"model parameter '{TOOL_CALL_PARSER}': {value!r} is not one of {', '.join((AUTO, *TOOL_FORMATS))}"
    )


def create_detokenizer_model(pb: Any, params: dict[str, str]) -> DetokenizerModel:
    return DetokenizerModel(pb, load_text_backend(pick(params, "model")["model"]).detokenize)
