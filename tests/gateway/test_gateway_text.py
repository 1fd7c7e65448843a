"""Pure pieces of the gateway: stop strings, reasoning split, OpenAI -> SamplingParams, error params."""

from __future__ import annotations

import pathlib
import random
import re

import pytest
from pydantic import ValidationError

from gateway.openai_errors import from_validation, param_from_loc
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest
from gateway.reasoning import ReasoningSplitter
from gateway.settings import GatewaySettings
from gateway.translate import NON_STREAMING_INTERVAL, chat_request, completion_request, sampling_params
from paddlellm.errors import ConfigError, InvalidRequest
from paddlellm.sampling import SamplingParams


def _random_splits(text: str, rng: random.Random) -> list[str]:
    cuts = (
        sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 8))))
        if len(text) > 1
        else []
    )
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@pytest.mark.parametrize("seed", range(100))
def test_reasoning_split_is_independent_of_chunking(seed: int) -> None:
    rng = random.Random(seed)
    text = "  <think>let me see: 2+2</think>\n\nIt is 4 <think> not a marker"
    reasoning = content = ""
    split = ReasoningSplitter("<think>", "</think>")
    for piece in _random_splits(text, rng):
        r, c = split.feed(piece)
        reasoning, content = reasoning + r, content + c
    r, c = split.flush()
    assert reasoning + r == "let me see: 2+2"
    assert content + c == "\n\nIt is 4 <think> not a marker"


def test_reasoning_without_markers_is_all_content_and_unterminated_is_reasoning() -> None:
    split = ReasoningSplitter("<think>", "</think>")
    assert split.feed("Hello") == ("", "Hello")
    inside = ReasoningSplitter("<think>", "</think>", starts_inside=True)
    assert inside.feed("still thinking </thi") == ("still thinking ", "")
    assert inside.flush() == ("</thi", "")


def _chat(**kw: object) -> ChatCompletionRequest:
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}], **kw}
    return ChatCompletionRequest.model_validate(body)


def test_sampling_params_mapping_and_defaults() -> None:
    s = GatewaySettings(max_model_len=100)
    p = sampling_params(_chat(stream=True), s)
    assert p == SamplingParams(max_tokens=None)  # chat: to the end of the context, as OpenAI and vLLM
    assert SamplingParams.from_json(p.to_json()).max_tokens is None
    completion = CompletionRequest.model_validate({"model": "default", "prompt": "hi", "stream": True})
    assert sampling_params(completion, s) == SamplingParams(max_tokens=16)  # legacy completions default
    p = sampling_params(
        _chat(max_tokens=5, temperature=0, top_p=0.5, seed=7, metadata={"min_tokens": "2"}), s
    )
    assert (p.max_tokens, p.temperature, p.top_p, p.seed, p.min_tokens) == (5, 0.0, 0.5, 7, 2)
    assert sampling_params(_chat(max_tokens=5, max_completion_tokens=9), s).max_tokens == 9


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"max_tokens": 100}, "max_tokens"),
        ({"max_completion_tokens": 500}, "max_completion_tokens"),
        ({"max_tokens": 3, "min_tokens": 4}, "min_tokens"),
        ({"metadata": {"min_tokens": "x"}}, "metadata.min_tokens"),
        ({"metadata": {"max_streaming_response_tokens": "0"}}, "metadata.max_streaming_response_tokens"),
        ({"metadata": {"max_streaming_response_tokens": 10**6}}, "metadata.max_streaming_response_tokens"),
    ],
)
def test_sampling_params_errors_name_the_field(kw: dict, param: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(f"'{param}'")) as e:
        sampling_params(_chat(**kw), GatewaySettings(max_model_len=100))
    assert e.value.param == param


def test_stream_interval_from_the_request_its_metadata_or_the_flag() -> None:
    s = GatewaySettings(max_model_len=100, stream_interval=3)

    def interval(**kw: object) -> int:
        return sampling_params(_chat(**kw), s).stream_interval

    assert interval(stream=True) == 3  # --stream-interval
    assert interval(stream=True, max_streaming_response_tokens=2) == 2  # FastDeploy's field wins
    assert interval(stream=True, metadata={"max_streaming_response_tokens": "5"}) == 5
    # Nobody sees the chunks of a non-streamed answer: at least NON_STREAMING_INTERVAL tokens per response.
    assert interval() == NON_STREAMING_INTERVAL
    assert interval(max_streaming_response_tokens=40) == 40
    with pytest.raises(ValidationError, match="max_streaming_response_tokens"):
        _chat(max_streaming_response_tokens=0)
    with pytest.raises(ConfigError, match="stream_interval"):
        GatewaySettings(stream_interval=-1)
    # By default the engine chooses (0 = auto: per token while the serving path has room).
    assert sampling_params(_chat(stream=True), GatewaySettings(max_model_len=100)).stream_interval == 0


def test_chat_request_flattens_text_parts_and_keeps_roles() -> None:
    req = _chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ],
        stop="x",
    )
    ens = chat_request(req, GatewaySettings())
    assert ens.prompt == "" and ens.stops == ("x",)
    assert ens.messages == '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ab"}]'
    comp = completion_request(CompletionRequest.model_validate({"prompt": ["once"]}), GatewaySettings())
    assert (comp.prompt, comp.messages) == ("once", "")


def test_param_from_loc_drops_union_tags() -> None:
    assert (
        param_from_loc(("messages", 0, "content", "list[TextPart]", 1, "type"))
        == "messages[0].content[1].type"
    )
    assert param_from_loc(("stop", "str")) == "stop"
    assert param_from_loc(()) is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
        ('{"messages": [{"role": "user", "content": "x"}], "stop": 5}', "stop"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
        ('{"messages": []}', "messages"),
        ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": true}', "max_tokens"),
    ],
)
def test_validation_errors_carry_the_param(body: str, param: str) -> None:
    # pydantic's message spells the location with dots: messages.0.role
    loc = re.escape(param.replace("[", ".").replace("]", ""))
    with pytest.raises(ValidationError, match=loc) as e:
        ChatCompletionRequest.model_validate_json(body)
    err = from_validation(e.value)
    assert (err.status, err.param, err.type) == (400, param, "invalid_request_error")


def test_settings_round_trip_and_strictness(tmp_path) -> None:
    s = GatewaySettings(
        served_model_name="m", api_key="k", reasoning_start="<think>", reasoning_end="</think>"
    )
    path = tmp_path / "s.json"
    path.write_text(s.to_json())
    assert GatewaySettings.from_file(path) == s
    with pytest.raises(ConfigError, match="bogus"):
        GatewaySettings.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="reasoning"):
        GatewaySettings(reasoning_start="<think>")


def test_abort_parameter_is_declared_once_in_the_wire_contract() -> None:
    from paddlellm import protocol

    root = pathlib.Path(__file__).resolve().parents[2]
    literal = repr(protocol.ABORT_PARAMETER).replace("'", '"')
    holders = [
        f.relative_to(root).as_posix()
        for d in ("gateway", "paddlellm", "launcher", "model_repository")
        for f in (root / d).rglob("*.py")
        if literal in f.read_text(encoding="utf-8")
    ]
    assert holders == ["paddlellm/protocol/__init__.py"]


def test_model_sampling_defaults_apply_only_when_the_request_is_silent() -> None:
    s = GatewaySettings(default_temperature=0.2, default_top_p=0.9)
    p = sampling_params(_chat(), s)
    assert (p.temperature, p.top_p) == (0.2, 0.9)
    p = sampling_params(_chat(temperature=0, top_p=1), s)
    assert (p.temperature, p.top_p) == (0.0, 1.0)
