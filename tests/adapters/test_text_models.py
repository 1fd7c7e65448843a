"""tokenizer and detokenizer models with the fake pb_utils and injected text functions."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from paddlellm import protocol as p
from paddlellm.triton import adapter, text_models
from paddlellm.triton.text_models import DetokenizerModel, TextBackend, TokenizerModel
from tests.adapters.conftest import initialize_args


def str_tensor(pb: ModuleType, name: str, value: str):
    return pb.Tensor(name, np.array([value.encode()], np.object_))


def tok_request(
    pb: ModuleType,
    prompt: str = "",
    messages: Any = None,
    sampling: dict | None = None,
    rid="t",
    tools: Any = None,
):
    messages_json = (
        "" if messages is None else messages if isinstance(messages, str) else json.dumps(messages)
    )
    inputs = [
        str_tensor(pb, p.PROMPT, prompt),
        str_tensor(pb, p.MESSAGES, messages_json),
        str_tensor(pb, p.SAMPLING, json.dumps(sampling or {})),
    ]
    if tools is not None:
        inputs.append(str_tensor(pb, p.TOOLS, tools if isinstance(tools, str) else json.dumps(tools)))
    return pb.InferenceRequest(inputs=inputs, request_id=rid)


def word_encoder(prompt: str, messages: list[dict[str, Any]] | None, tools: Any = None) -> list[int]:
    text = prompt if messages is None else " ".join(f"<{m['role']}> {m['content']}" for m in messages)
    return [len(w) for w in text.split()]


def error_of(response) -> tuple[int, Any]:
    err = response.error()
    return err.code(), p.parse_error(err.message())


# ------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_encodes_prompt_and_messages(pb: ModuleType) -> None:
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    chat = [{"role": "user", "content": "hi there"}]
    r1, r2 = model.execute([tok_request(pb, prompt="a bb ccc"), tok_request(pb, messages=chat)])
    ids = r1.outputs()[p.INPUT_IDS]
    assert ids.dtype == np.int32 and ids.tolist() == [1, 2, 3]
    assert r2.outputs()[p.INPUT_IDS].tolist() == [6, 2, 5]
    assert set(r1.outputs()) == {s.name for s in p.TOKENIZER.outputs}


def test_tokenizer_rejects_too_long_prompt_naming_the_limit(pb: ModuleType) -> None:
    model = TokenizerModel(pb, word_encoder, max_model_len=10)
    ok, too_long, chat_too_long = model.execute(
        [
            tok_request(pb, prompt="a " * 6, sampling={"max_tokens": 4}),
            tok_request(pb, prompt="a " * 6, sampling={"max_tokens": 5}),
            tok_request(pb, messages=[{"role": "user", "content": "x " * 20}]),
        ]
    )
    assert not ok.has_error()
    code, err = error_of(too_long)
    assert code == pb.TritonError.INVALID_ARG and err.param == "prompt"
    assert "max_model_len=10" in err.message and "6 tokens" in err.message
    assert error_of(chat_too_long)[1].param == "messages"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"sampling": {"temperature": -1}}, "temperature"),
        ({"messages": "{not json"}, "messages"),
        ({"messages": {"role": "user"}}, "messages"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_tokenizer_errors_are_typed_and_per_request(pb: ModuleType, kwargs, param) -> None:
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    bad, good = model.execute([tok_request(pb, **{"prompt": "x", **kwargs}), tok_request(pb, prompt="fine")])
    code, err = error_of(bad)
    assert code == pb.TritonError.INVALID_ARG and err.param == param
    assert not good.has_error()


def test_tokenizer_internal_failure_has_no_traceback(pb: ModuleType) -> None:
    def broken(prompt: str, messages: Any, tools: Any = None) -> list[int]:
        raise KeyError("secret internals")

    [resp] = TokenizerModel(pb, broken, max_model_len=64).execute([tok_request(pb, prompt="x")])
    code, err = error_of(resp)
    assert code == pb.TritonError.INTERNAL
    assert "KeyError" in err.message and "secret" not in err.message and "Traceback" not in err.message


def test_tokenizer_rejects_bad_utf8(pb: ModuleType) -> None:
    req = tok_request(pb, prompt="x")
    req._inputs[p.PROMPT] = pb.Tensor(p.PROMPT, np.array([b"\xff\xfe"], np.object_))
    [resp] = TokenizerModel(pb, word_encoder, max_model_len=64).execute([req])
    assert error_of(resp)[1].param == p.PROMPT


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_tokenizer_hands_tools_to_the_encoder(pb: ModuleType) -> None:
    seen: list[Any] = []

    def encoder(prompt: str, messages: Any, tools: Any = None) -> list[int]:
        seen.append(tools)
        return [1, 2]

    chat = [{"role": "user", "content": "hi"}]
    model = TokenizerModel(pb, encoder, max_model_len=64)
    responses = model.execute(
        [tok_request(pb, messages=chat, tools=[WEATHER]), tok_request(pb, messages=chat, tools="")]
    )
    assert not any(r.has_error() for r in responses)
    assert seen == [[WEATHER], None]  # "" (what the gateway sends for none) is no tools


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": "x", "tools": [WEATHER]},  # tools with a raw prompt: nothing would render them
        {"messages": [{"role": "user", "content": "hi"}], "tools": "[{not json"},
        {"messages": [{"role": "user", "content": "hi"}], "tools": WEATHER},  # not an array
    ],
)
def test_bad_tools_input_names_it(pb: ModuleType, kwargs) -> None:
    [resp] = TokenizerModel(pb, word_encoder, max_model_len=64).execute([tok_request(pb, **kwargs)])
    code, err = error_of(resp)
    assert code == pb.TritonError.INVALID_ARG and err.param == p.TOOLS


# ------------------------------------------------------------------------------------------ detokenizer


def detok_request(pb: ModuleType, window, prefix_len, finish="", rid="d"):
    return pb.InferenceRequest(
        inputs=[
            pb.Tensor(p.WINDOW_IDS, np.asarray(window, np.int32)),
            pb.Tensor(p.PREFIX_LEN, np.array([prefix_len], np.int32)),
            str_tensor(pb, p.FINISH_REASON, finish),
        ],
        request_id=rid,
    )


def letters(window, prefix_len, final) -> str:
    text = "".join(chr(96 + t) for t in window)
    return text[prefix_len:] + ("." if final else "")


def test_detokenizer_delta_per_request(pb: ModuleType) -> None:
    calls = []

    def step(window, prefix_len, final):
        calls.append((tuple(window), prefix_len, final))
        return letters(window, prefix_len, final)

    requests = [
        detok_request(pb, [1, 2, 3], 2, finish="stop"),
        detok_request(pb, [4, 5], 0),
        detok_request(pb, [7], 2),  # bad: an error for this request only
    ]
    first, second, bad = DetokenizerModel(pb, step).execute(requests)
    assert calls == [((1, 2, 3), 2, True), ((4, 5), 0, False)]
    for resp, text in ((first, "c."), (second, "de")):
        out = resp.outputs()
        assert set(out) == {s.name for s in p.DETOKENIZER.outputs}  # the text only: the rest bypasses it
        assert out[p.TEXT_OUTPUT].tolist() == [text.encode()]
    assert error_of(bad)[1].param == p.PREFIX_LEN


def test_detokenizer_rejects_prefix_outside_window(pb: ModuleType) -> None:
    [resp] = DetokenizerModel(pb, letters).execute([detok_request(pb, [1, 2], 3)])
    assert error_of(resp)[1].param == p.PREFIX_LEN


def test_cancelled_detokenizer_request_aborts_the_engine_request(pb: ModuleType) -> None:
    seen = []

    def engine(request):
        seen.append((request.request_id(), adapter.is_abort(request), [t.name() for t in request.inputs()]))
        return []  # the engine answers an abort with FINAL only: no data responses

    pb.bls_models[p.LLM_ENGINE.name] = engine
    req = detok_request(pb, [1, 2], 1, rid="client-42")
    req.cancel()
    [resp] = DetokenizerModel(pb, letters).execute([req])
    images = {t.name for t in p.IMAGE_TENSORS}
    sent = [t.name for t in p.LLM_ENGINE.inputs if t.name not in images]
    assert seen == [("client-42", True, sent)]  # every input but the images (optional, none to abort)
    # Still a normal answer: an error here would leave the cancelled ensemble in flight in Triton 2.51.
    assert resp.outputs()[p.TEXT_OUTPUT][0] == b"b"


def test_abort_failure_does_not_break_the_detokenizer(pb: ModuleType) -> None:
    req = detok_request(pb, [1], 0, rid="x")  # no engine registered: exec raises
    req.cancel()
    [resp] = DetokenizerModel(pb, letters).execute([req])
    assert not resp.has_error()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cancel_poll_asks_each_stream_at_first_then_every_interval() -> None:
    clock = Clock()
    poll = text_models.CancelPoll(interval_s=0.25, forget_s=10.0, clock=clock)
    assert poll.due("a") and poll.due("b")  # first response of each stream
    assert not poll.due("a")
    clock.now += 0.2
    assert not poll.due("a")
    clock.now += 0.05
    assert poll.due("a") and not poll.due("a")
    assert not poll.due("")  # no request id: no abort could name the engine request
    poll.forget("a")
    assert poll.due("a")  # a new stream reusing the id starts afresh
    clock.now += 9.0
    assert poll.due("a")  # "a" keeps streaming; "b" ended without a final response here (an engine error)
    clock.now += 2.0
    assert poll.due("c")
    assert len(poll) == 2  # "b" swept, "a" and "c" kept


def test_detokenizer_asks_is_cancelled_only_when_the_poll_is_due(pb: ModuleType) -> None:
    """is_cancelled() is an IPC round trip in the python backend: a stream is asked at its first response
    and then every interval, not at every response; a cancelled stream is still seen and aborted."""
    clock = Clock()
    asked: list[str] = []
    aborted: list[str] = []

    def engine(request):
        aborted.append(request.request_id())
        return []

    pb.bls_models[p.LLM_ENGINE.name] = engine
    model = DetokenizerModel(pb, letters, cancel_poll=text_models.CancelPoll(interval_s=0.25, clock=clock))

    def response(rid: str, cancelled: bool = False, finish: str = ""):
        req = detok_request(pb, [1, 2], 1, finish=finish, rid=rid)
        if cancelled:
            req.cancel()
        original = req.is_cancelled
        req.is_cancelled = lambda: asked.append(rid) or original()
        [resp] = model.execute([req])
        assert resp.outputs()[p.TEXT_OUTPUT].tolist() == [b"b." if finish else b"b"]

    for _ in range(5):  # one engine step's response every 0.1 s
        response("s1")
        clock.now += 0.1
    assert asked == ["s1", "s1"]  # at 0.0 and 0.3
    response("s1", cancelled=True)  # 0.5: the client went away; not due yet
    assert aborted == []
    clock.now += 0.1
    response("s1", cancelled=True)  # 0.6: due, seen, aborted
    assert aborted == ["s1"]
    response("s2", finish="length")  # a one-response stream: asked once, then forgotten
    assert asked[-1] == "s2" and len(model.cancel_poll) == 1


# ------------------------------------------------------------------------------------------ model.py


@pytest.fixture
def fake_text(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loaded: list[str] = []

    def load(model: str, tool_format: str | None = None) -> TextBackend:
        loaded.append(model if tool_format is None else f"{model} {tool_format}")
        return TextBackend(encode=word_encoder, detokenize=letters)

    monkeypatch.setattr(text_models, "load_text_backend", load)
    return loaded


def test_tokenizer_model_py(pb: ModuleType, load_model, fake_text) -> None:
    m = load_model("tokenizer").TritonPythonModel()
    m.initialize(initialize_args("tokenizer", {"model": "/ckpt", "max_model_len": "20"}))
    assert fake_text == ["/ckpt"]
    ok, bad = m.execute([tok_request(pb, prompt="a b"), tok_request(pb, prompt="a " * 5)])  # 5 + 16 > 20
    assert ok.outputs()[p.INPUT_IDS].tolist() == [1, 1]
    assert error_of(bad)[0] == pb.TritonError.INVALID_ARG


@pytest.mark.parametrize(
    ("value", "loaded"), [("auto", "/ckpt"), ("hermes", "/ckpt hermes"), ("generic", "/ckpt generic")]
)
def test_tokenizer_model_py_tool_call_parser(pb: ModuleType, load_model, fake_text, value, loaded) -> None:
    m = load_model("tokenizer").TritonPythonModel()
    m.initialize(
        initialize_args("tokenizer", {"model": "/ckpt", "max_model_len": "8", "tool_call_parser": value})
    )
    assert fake_text == [loaded]


def test_detokenizer_model_py(pb: ModuleType, load_model, fake_text) -> None:
    m = load_model("detokenizer").TritonPythonModel()
    m.initialize(initialize_args("detokenizer", {"model": "/ckpt"}))
    [resp] = m.execute([detok_request(pb, [1, 2], 1)])
    assert resp.outputs()[p.TEXT_OUTPUT].tolist() == [b"b"]


def test_tokenizer_model_py_config_errors(pb: ModuleType, load_model, fake_text) -> None:
    from paddlellm.errors import ConfigError

    m = load_model("tokenizer").TritonPythonModel()
    with pytest.raises(ConfigError, match="max_model_len"):
        m.initialize(initialize_args("tokenizer", {"model": "/ckpt"}))
    with pytest.raises(ConfigError, match="max_model_len"):
        m.initialize(initialize_args("tokenizer", {"model": "/ckpt", "max_model_len": "lots"}))
    with pytest.raises(ConfigError, match="model"):
        m.initialize(initialize_args("tokenizer", {"model": "${model}", "max_model_len": "8"}))
    with pytest.raises(ConfigError, match="tool_call_parser.*mistral.*hermes, llama3_json, generic"):
        m.initialize(
            initialize_args("tokenizer", {"model": "/c", "max_model_len": "8", "tool_call_parser": "mistral"})
        )


# ------------------------------------------------------------------------------------------ real text


@pytest.mark.parametrize("checkpoint", ["default_model_dir", "llama2_tokenizer_dir"])
def test_engine_windows_through_the_real_detokenizer_are_byte_exact(
    pb: ModuleType, request: pytest.FixtureRequest, checkpoint: str
) -> None:
    """The engine adapter's windows + the detokenizer model + paddlellm.text reproduce decode(all ids),
    one token per step, over multi-byte UTF-8 (Chinese, emoji) and leading spaces."""
    from collections import deque

    from paddlellm.engine.outputs import RequestOutput
    from paddlellm.text.tokenizer import TextTokenizer
    from paddlellm.triton.engine_model import DETOKENIZER_CONTEXT

    path = request.getfixturevalue(checkpoint)
    backend = text_models.load_text_backend(path)
    text = "Hello  wörld: 你好，世界! 🌍🚀 naïve café\n  indented"
    ids = list(backend.encode(text, None))
    detok = DetokenizerModel(pb, backend.detokenize)
    context: deque[int] = deque(maxlen=DETOKENIZER_CONTEXT)
    deltas = []
    for n, token in enumerate(ids, start=1):
        last = n == len(ids)
        out = RequestOutput("r", (token,), 3, n, finished=last, finish_reason="stop" if last else None)
        engine = {t.name(): t for t in adapter.engine_response(pb, out, tuple(context), "").output_tensors()}
        context.append(token)
        # What the ensemble hands the detokenizer: the engine outputs its input_map names.
        inputs = [engine[s.name] for s in p.DETOKENIZER.inputs]
        [resp] = detok.execute([pb.InferenceRequest(inputs=inputs, request_id="r")])
        deltas.append(resp.outputs()[p.TEXT_OUTPUT][0].decode())
    assert "".join(deltas) == TextTokenizer.from_dir(path).decode(ids)
    assert "".join(deltas).endswith("indented")


def test_real_tokenizer_model_encodes_chat_with_the_template(pb: ModuleType, default_model_dir: str) -> None:
    from paddlellm.text.tokenizer import TextTokenizer

    backend = text_models.load_text_backend(default_model_dir)
    model = TokenizerModel(pb, backend.encode, max_model_len=2048)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 你好"}]
    r_chat, r_prompt = model.execute([tok_request(pb, messages=chat), tok_request(pb, prompt="Hi 你好")])
    tok = TextTokenizer.from_dir(default_model_dir)
    assert r_chat.outputs()[p.INPUT_IDS].tolist() == tok.encode_chat(chat)
    assert r_prompt.outputs()[p.INPUT_IDS].tolist() == tok.encode("Hi 你好")


def test_real_tokenizer_model_renders_tools(pb: ModuleType, default_model_dir: str) -> None:
    """`tools` reach the template path: the generic tools prompt (SmolLM2's template has no tool support) or,
    with tool_call_parser hermes, <tool_call> blocks; a malformed tool names its field."""
    from paddlellm.text.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(default_model_dir)
    chat = [{"role": "user", "content": "Weather in Paris?"}]
    bad_tool = [{"type": "function", "function": {"name": ""}}]
    for fmt in (None, "hermes"):
        model = TokenizerModel(pb, text_models.load_text_backend(default_model_dir, fmt).encode, 2048)
        ok, bad = model.execute(
            [tok_request(pb, messages=chat, tools=[WEATHER]), tok_request(pb, messages=chat, tools=bad_tool)]
        )
        ids = ok.outputs()[p.INPUT_IDS].tolist()
        assert ids == tok.encode_chat(chat, tools=[WEATHER], tool_format=fmt) != tok.encode_chat(chat)
        assert ("<tool_call>" in tok.decode(ids)) == (fmt == "hermes")
        assert error_of(bad)[1].param == "tools[0].function.name"


# ------------------------------------------------------------ Triton's LLM convention (vLLM backend names)


def vllm_request(pb: ModuleType, text: str, stream: bool | None = None, exclude: bool | None = None, **extra):
    inputs = [str_tensor(pb, p.TEXT_INPUT, text)]
    if stream is not None:
        inputs.append(pb.Tensor(p.STREAM, np.array([stream], np.bool_)))
    if exclude is not None:
        inputs.append(pb.Tensor(p.EXCLUDE_INPUT_IN_OUTPUT, np.array([exclude], np.bool_)))
    inputs += [str_tensor(pb, name, value) for name, value in extra.items()]
    return pb.InferenceRequest(inputs=inputs, request_id="v")


def canonical_sampling(response) -> dict[str, Any]:
    return json.loads(response.outputs()[p.SAMPLING][0].decode())


def test_tokenizer_reads_the_vllm_backend_names(pb: ModuleType) -> None:
    """genai-perf's request: text_input, stream, exclude_input_in_output, and sampling_parameters with the
    numbers as strings."""
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    params = json.dumps({"max_tokens": "12", "min_tokens": "12", "temperature": 0, "top_k": -1})
    [r] = model.execute([vllm_request(pb, "a bb ccc", True, True, sampling_parameters=params)])
    assert r.outputs()[p.INPUT_IDS].tolist() == [1, 2, 3]
    s = canonical_sampling(r)
    assert (s["max_tokens"], s["min_tokens"], s["temperature"], s["stream"], s["echo"]) == (
        12,
        12,
        0.0,
        True,
        False,
    )


@pytest.mark.parametrize(
    ("stream", "exclude", "expect"),
    [
        (None, None, (False, True)),
        (True, None, (True, False)),
        (False, True, (False, False)),
        (True, False, (True, True)),
    ],
)
def test_vllm_defaults_no_stream_and_the_prompt_leads_the_text(
    pb: ModuleType, stream, exclude, expect
) -> None:
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    [r] = model.execute([vllm_request(pb, "hi", stream, exclude)])
    s = canonical_sampling(r)
    assert (s["stream"], s["echo"]) == expect
    assert s["max_tokens"] == 16 and s["temperature"] == 1.0  # vLLM's defaults


def test_our_inputs_keep_streaming_and_may_be_left_out(pb: ModuleType) -> None:
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    only_prompt = pb.InferenceRequest(inputs=[str_tensor(pb, p.PROMPT, "a bb")], request_id="o")
    [r1, r2] = model.execute([tok_request(pb, messages=[{"role": "user", "content": "x"}]), only_prompt])
    assert (canonical_sampling(r1)["stream"], canonical_sampling(r1)["echo"]) == (True, False)
    assert r2.outputs()[p.INPUT_IDS].tolist() == [1, 2] and canonical_sampling(r2)["stream"] is True


@pytest.mark.parametrize(
    ("request_kw", "param"),
    [
        ({"text": "hi", "prompt": "also"}, p.TEXT_INPUT),
        ({"text": "hi", "sampling_parameters": '{"stop": ["\\n"]}'}, "stop"),
        ({"text": "hi", "sampling_parameters": '{"repetition_penalty": 1.2}'}, "repetition_penalty"),
        ({"text": "hi", "sampling_parameters": '{"logprobs": 21}'}, "logprobs"),
        ({"text": "hi", "sampling_parameters": '{"max_tokens": "many"}'}, "max_tokens"),
        ({"text": "hi", "sampling_parameters": '{"lora_name": "x"}'}, "lora_name"),
        ({"text": "hi", "sampling_parameters": "[1]"}, "sampling_parameters"),
        ({"text": "hi", "sampling_parameters": "{}", "sampling": '{"max_tokens": 2}'}, "sampling_parameters"),
        ({"text": ""}, p.TEXT_INPUT),
    ],
)
def test_vllm_requests_we_cannot_honour_fail_naming_the_input(pb: ModuleType, request_kw, param) -> None:
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    kw = dict(request_kw)
    [r] = model.execute([vllm_request(pb, kw.pop("text"), **kw)])
    code, err = error_of(r)
    assert code == pb.TritonError.INVALID_ARG and err.param == param, err


def test_chat_messages_mix_with_the_vllm_names(pb: ModuleType) -> None:
    """Chat keeps working over Triton's convention: `messages` as the prompt source, vLLM's sampling and
    stream inputs beside it (no echo: there is no raw prompt to echo)."""
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    chat = json.dumps([{"role": "user", "content": "hi there"}])
    inputs = [
        str_tensor(pb, p.MESSAGES, chat),
        str_tensor(pb, p.SAMPLING_PARAMETERS, '{"max_tokens": 8, "temperature": "0"}'),
        pb.Tensor(p.STREAM, np.array([False], np.bool_)),
    ]
    [r] = model.execute([pb.InferenceRequest(inputs=inputs, request_id="m")])
    assert r.outputs()[p.INPUT_IDS].tolist() == [6, 2, 5]
    s = canonical_sampling(r)
    assert (s["max_tokens"], s["temperature"], s["stream"], s["echo"]) == (8, 0.0, False, False)


@pytest.mark.parametrize(
    ("sampling_parameters", "return_logprobs", "expect"),
    [
        ("{}", None, (None, None)),
        ("{}", False, (None, None)),
        ("{}", True, (0, None)),  # the vLLM backend's flag alone: the chosen tokens' logprobs
        ('{"logprobs": 2, "prompt_logprobs": "1"}', None, (2, 1)),
        ('{"logprobs": 3}', True, (3, None)),
    ],
)
def test_logprobs_by_the_vllm_convention(
    pb: ModuleType, sampling_parameters, return_logprobs, expect
) -> None:
    """`sampling_parameters.logprobs` / `prompt_logprobs` (vLLM's names), and the optional `return_logprobs`
    input (the vLLM backend's): true asks for the chosen tokens' logprobs when the sampling asked none."""
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    request = vllm_request(pb, "hi", sampling_parameters=sampling_parameters)
    if return_logprobs is not None:
        request = pb.InferenceRequest(
            inputs=[*request.inputs(), pb.Tensor(p.RETURN_LOGPROBS, np.array([return_logprobs], np.bool_))],
            request_id="v",
        )
    [r] = model.execute([request])
    s = canonical_sampling(r)
    assert (s["logprobs"], s["prompt_logprobs"]) == expect


def test_return_logprobs_with_our_sampling(pb: ModuleType) -> None:
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    request = tok_request(pb, prompt="a bb", sampling={"max_tokens": 2})
    request = pb.InferenceRequest(
        inputs=[*request.inputs(), pb.Tensor(p.RETURN_LOGPROBS, np.array([True], np.bool_))], request_id="o"
    )
    [r] = model.execute([request])
    assert canonical_sampling(r)["logprobs"] == 0 and canonical_sampling(r)["max_tokens"] == 2


@pytest.mark.parametrize(
    ("sampling_parameters", "expect"),
    [
        ({"structured_outputs": {"json": {"type": "object"}}}, ("json_schema", '{"type":"object"}', False)),
        # vLLM's default disable_any_whitespace (false) is flexible JSON whitespace; backend changes nothing.
        (
            {"structured_outputs": {"json_object": True, "disable_any_whitespace": False, "backend": "auto"}},
            ("json_object", "", True),
        ),
        ({"structured_outputs": json.dumps({"regex": "[0-9]+"})}, ("regex", "[0-9]+", False)),
        # vLLM <= 0.10's name, as vLLM serialises it (every field, the unset ones null).
        (
            {
                "guided_decoding": {
                    "json": None,
                    "regex": None,
                    "choice": ["yes", "no"],
                    "grammar": None,
                    "json_object": None,
                    "backend": None,
                    "whitespace_pattern": None,
                    "disable_any_whitespace": False,
                }
            },
            ("choice", ["yes", "no"], False),
        ),
        ({"guided_json": {"type": "integer"}}, ("json_schema", '{"type":"integer"}', False)),
        ({"guided_json": '{"type": "integer"}'}, ("json_schema", '{"type":"integer"}', False)),
        ({"guided_regex": "a+", "guided_decoding_backend": "xgrammar"}, ("regex", "a+", False)),
        ({"guided_choice": '["x", "y"]'}, ("choice", ["x", "y"], False)),
        ({"guided_grammar": 'start: "a"'}, ("grammar", 'start: "a"', False)),
    ],
)
def test_structured_outputs_by_the_vllm_convention(pb: ModuleType, sampling_parameters, expect) -> None:
    """vLLM's structured_outputs, its older guided_decoding and the older top-level guided_* keys: one spec in
    the canonical sampling, its param the key the client used (compile errors name it)."""
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    [r] = model.execute([vllm_request(pb, "hi", sampling_parameters=json.dumps(sampling_parameters))])
    spec = canonical_sampling(r)["structured_outputs"]
    assert (spec["kind"], spec["value"], spec["whitespace_flexible"]) == expect
    key = next(iter(sampling_parameters))
    sub = {"json_schema": "json", "regex": "regex", "choice": "choice", "json_object": "json_object"}
    assert spec["param"] in (key, f"{key}.{sub.get(expect[0])}")


@pytest.mark.parametrize(
    ("sampling_parameters", "param"),
    [
        ({"guided_regex": "a", "guided_json": {}}, "guided_regex"),  # two constraints: the second is named
        ({"structured_outputs": {"regex": "a"}, "guided_choice": ["a"]}, "guided_choice"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        (
            {"structured_outputs": {"regex": "a", "whitespace_pattern": " "}},
            "structured_outputs.whitespace_pattern",
        ),
        ({"structured_outputs": {"regex": "a", "structural_tag": "{}"}}, "structured_outputs.structural_tag"),
        ({"guided_json": {}, "guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
        ({"guided_decoding": "not json"}, "guided_decoding"),
        ({"guided_decoding": [1]}, "guided_decoding"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_regex": ""}, "guided_regex"),
        ({"guided_json": "[1]"}, "guided_json"),
        ({"structured_outputs": {"json": {"a": {"b": {}}}, "wat": 1}}, "structured_outputs"),
    ],
)
def test_bad_structured_outputs_by_the_vllm_convention_name_the_key(
    pb: ModuleType, sampling_parameters, param
) -> None:
    model = TokenizerModel(pb, word_encoder, max_model_len=64)
    [r] = model.execute([vllm_request(pb, "hi", sampling_parameters=json.dumps(sampling_parameters))])
    code, err = error_of(r)
    assert code == pb.TritonError.INVALID_ARG and err.param == param, err
