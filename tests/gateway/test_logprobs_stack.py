"""Logprobs, echo and n through the whole stack (gateway -> Triton ensemble -> engine), default model in
fp32 (`--quantization none`), read with the openai client. Values equal transformers' log_softmax on the
same weights within 5e-3 (chat, completions, echo's prompt entries); greedy tokens are their own top-1;
streamed entries equal non-streamed; `bytes` join to the content. n: choices are equal at temperature 0,
repeat with a seed, and the prompt is prefilled once (the engine's prefix-cache hits count the other
choices' prompts). Slow: the engine loads in ~30 s."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from launcher.tritonenv import TritonNotFound, locate
from tests.procs import served_stack

torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
TOL = 5e-3
MESSAGES = [{"role": "user", "content": "Name two rivers in Europe and one fact about each."}]


@pytest.fixture(scope="module")
def url(default_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        locate()
    except TritonNotFound as e:
        pytest.skip(f"tritonserver not set up: {e}")
    run_dir = tmp_path_factory.mktemp("logprobs-stack") / "run"
    flags = ("--max-model-len", "1024", "--max-num-seqs", "8", "--quantization", "none", "--block-size", "16")
    with served_stack(default_model_dir, run_dir, *flags) as url:
        yield url


@pytest.fixture(scope="module")
def reference(default_model_dir: str) -> tuple[Any, Any]:
    model = transformers.AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(default_model_dir)


def _ref(model: Any, ids: list[int]) -> np.ndarray:
    """Row j: log_softmax of the next-token logits after ids[: j + 1]."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1).numpy()


def _chat(url: str, **extra: Any) -> dict:
    body = {"model": "default", "messages": MESSAGES, "max_tokens": 24, "temperature": 0, **extra}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_logprobs_equal_transformers_and_stream_equals_whole(
    url: str, reference: tuple[Any, Any]
) -> None:
    from openai import OpenAI

    model, tok = reference
    client = OpenAI(base_url=url + "/v1", api_key="null")
    whole = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=24, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = whole.choices[0]
    content = choice.logprobs.content
    assert b"".join(bytes(e.bytes) for e in content) == choice.message.content.encode()
    ids = _chat(url, logprobs=True, top_logprobs=3)["choices"][0]["token_ids"]
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    assert len(prompt) == whole.usage.prompt_tokens
    ref = _ref(model, list(prompt) + ids)
    generated = ids[: len(content)]  # a final EOS has no entry (OpenAI leaves the stop token out)
    for k, (entry, token) in enumerate(zip(content, generated, strict=True)):
        row = ref[len(prompt) + k - 1]
        assert abs(entry.logprob - row[token]) <= TOL, (k, entry.logprob, row[token])
        assert entry.top_logprobs[0].logprob == entry.logprob  # greedy: its own top-1
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(np.sort(row)[::-1][:3], abs=TOL)
    stream = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=24, temperature=0, logprobs=True, top_logprobs=3,
        stream=True,
    )
    streamed = [
        e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]


def test_completion_echo_logprobs_equal_transformers(url: str, reference: tuple[Any, Any]) -> None:
    model, tok = reference
    prompt = "The longest river in Europe is the"
    body = {"model": "default", "prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 2,
            "echo": True}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    prompt_ids = tok(prompt)["input_ids"]
    ids = list(prompt_ids) + choice["token_ids"]
    assert choice["text"].startswith(prompt) and "".join(lp["tokens"]) == choice["text"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # OpenAI's first token
    ref = _ref(model, ids)
    assert len(lp["token_logprobs"]) == len(ids)
    for j in range(1, len(ids)):
        assert abs(lp["token_logprobs"][j] - ref[j - 1][ids[j]]) <= TOL, (j, lp["token_logprobs"][j])
        assert len(lp["top_logprobs"][j]) >= 1
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:j]) for j in range(len(lp["tokens"]))]


def _engine_prefix_hits(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    hits = re.findall(r"^paddlellm:prefix_cache_hits_total(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    assert hits, "no prefix-cache hit counter in /metrics"
    return sum(float(h) for h in hits)


def test_n_choices_equal_greedy_repeat_with_seed_and_prefill_once(url: str) -> None:
    greedy = _chat(url, n=3)
    texts = [c["message"]["content"] for c in sorted(greedy["choices"], key=lambda c: c["index"])]
    assert len(texts) == 3 and len(set(texts)) == 1
    usage = greedy["usage"]
    assert usage["completion_tokens"] == sum(len(c["token_ids"]) for c in greedy["choices"])
    seeded = [_chat(url, n=3, temperature=1.0, seed=7, messages=[{"role": "user", "content": "Tell a tale."}])
              for _ in range(2)]
    assert [c["message"]["content"] for c in seeded[0]["choices"]] == [
        c["message"]["content"] for c in seeded[1]["choices"]
    ]
    # A prompt never seen before: choices 2..n find it in the prefix cache (whole blocks of it).
    before = _engine_prefix_hits(url)
    fresh = [{"role": "user", "content": "Describe the Danube, the Rhine and the Volga in a line each. " * 4}]
    out = _chat(url, n=3, messages=fresh)
    prompt_tokens = out["usage"]["prompt_tokens"]
    gained = _engine_prefix_hits(url) - before
    assert gained >= 2 * (prompt_tokens // 16 * 16 - 16), (gained, prompt_tokens)
    assert json.dumps(out)  # the body is JSON all through
