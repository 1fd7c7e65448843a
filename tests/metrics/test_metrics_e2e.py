"""Acceptance: 20 requests with known token counts through a real tritonserver and gateway (tiny random-weight
checkpoint); then the counters equal the known totals, every per-request histogram holds 20 observations,
and the running/waiting gauges and KV usage are back to 0. The same with two gateway workers and /metrics on
its own port. Every family the live page shows is documented, and each finished request left one log line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from paddlellm.protocol.metric_names import (
    ENGINE_METRICS,
    GATEWAY_METRICS,
    HISTOGRAM,
    LAUNCHER_METRICS,
    PREFIX,
)
from paddlellm.text.tokenizer import TextTokenizer
from tests.metrics.promtext import Exposition
from tests.metrics.stack import Stack, running_stack
from tests.metrics.test_docs import documented_metrics

pytestmark = pytest.mark.e2e
N = 20
WORDS = "the quick brown fox jumps over a lazy dog while seven tired llamas count stars".split()


def prompt(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i))


def max_tokens(i: int) -> int:
    return 2 + i % 7


def n(page: Exposition, short: str, **labels: str) -> float:
    return page.value(PREFIX + short, **labels)


def hist_count(page: Exposition, short: str) -> float:
    return page.hist_count(PREFIX + short)


def one_request(stack: Stack, i: int) -> tuple[str, dict]:
    """A completion (every other one streamed) that must generate exactly max_tokens(i) tokens."""
    body = {
        "model": "default",
        "prompt": prompt(i),
        "max_tokens": max_tokens(i),
        "temperature": 0,
        "ignore_eos": True,
    }
    if i % 2:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", stack.url + "/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            return r.headers["x-request-id"], chunks[-1]["usage"]
    r = httpx.post(stack.url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"], r.json()["usage"]


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint) -> str:
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module", params=[(1, False), (2, True)], ids=["1-worker", "2-workers-metrics-port"])
def stack(
    request: pytest.FixtureRequest, model_dir: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workers, separate = request.param
    run_dir = tmp_path_factory.mktemp("metrics-stack") / "run"
    with running_stack(
        model_dir, run_dir, workers, separate, ("--max-model-len", "256", "--block-size", "16")
    ) as st:
        yield st


def test_workload_totals_histograms_and_gauges(stack: Stack, model_dir: str) -> None:
    tok = TextTokenizer.from_dir(model_dir)
    prompts = [len(tok.encode(prompt(i))) for i in range(N)]
    outputs = [max_tokens(i) for i in range(N)]
    before = stack.wait_metrics(lambda page: True)  # what earlier requests queued, applied
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: one_request(stack, i), range(N)))
    for i, (_, usage) in enumerate(results):
        assert usage["prompt_tokens"] == prompts[i] and usage["completion_tokens"] == outputs[i], (i, usage)

    def delta(page: Exposition, short: str, **labels: str) -> float:
        return n(page, short, **labels) - n(before, short, **labels)

    def settled(page: Exposition) -> bool:
        return (
            delta(page, "request_success_total") == N
            and n(page, "num_requests_running") == 0
            and n(page, "kv_cache_usage_perc") == 0
        )

    after = stack.wait_metrics(settled)
    # Counters: exactly the workload (no health probe ran meanwhile).
    assert delta(after, "requests_number_total") == N
    assert delta(after, "request_success_total", finished_reason="length") == N
    assert delta(after, "request_failure_total") == 0
    assert delta(after, "prompt_tokens_total") == sum(prompts)
    assert delta(after, "generation_tokens_total") == sum(outputs)
    assert delta(after, "num_preemptions_total") == 0
    # Every prompt was looked up in the prefix cache; none shares a full 16-token block with another.
    assert delta(after, "prefix_cache_queries_total") == sum(prompts)
    assert delta(after, "prefix_cache_hits_total") == 0
    # Histograms: one observation per request; the token ones also sum to the totals. Per step or per
    # compile, not per request: the batch size and the structured-output ones (no request here has one).
    not_per_request = {PREFIX + "batch_size", PREFIX + "structured_output_compile_time_seconds",
                   PREFIX + "structured_output_mask_time_seconds"}
    for spec in ENGINE_METRICS:
        if spec.kind == HISTOGRAM and spec.name not in not_per_request:
            got = after.hist_count(spec.name) - before.hist_count(spec.name)
            assert got == N, spec.name
            assert (
                after.value(spec.name + "_bucket", le="+Inf") - before.value(spec.name + "_bucket", le="+Inf")
                == N
            )
    for short, total in (
        ("request_prompt_tokens", prompts),
        ("request_generation_tokens", outputs),
        ("request_params_max_tokens", outputs),
    ):
        assert after.hist_sum(PREFIX + short) - before.hist_sum(PREFIX + short) == sum(total), short
    # Prompts fit one step and nothing was preempted: a request takes part in one step per output token, but
    # for the draft tokens speculation (on by default) accepted: each came in the step of the token before it.
    accepted = delta(after, "spec_decode_num_accepted_tokens_total")
    steps = after.hist_sum(PREFIX + "batch_size") - before.hist_sum(PREFIX + "batch_size")
    assert steps == sum(outputs) - accepted, (steps, sum(outputs), accepted)
    # Gauges back to idle.
    assert n(after, "num_requests_running") == 0 and n(after, "num_requests_waiting") == 0
    assert n(after, "kv_cache_usage_perc") == 0
    assert n(after, "kv_cache_free_blocks") == n(after, "kv_cache_blocks") > 0
    # Gateway: every worker's requests counted once.
    route = "/v1/completions"
    assert (
        after.value(PREFIX + "http_requests_total", route=route, status="200")
        - before.value(PREFIX + "http_requests_total", route=route, status="200")
        == N
    )
    dur = PREFIX + "http_request_duration_seconds"
    assert after.hist_count(dur, route=route) - before.hist_count(dur, route=route) == N
    assert after.value(PREFIX + "http_requests_in_progress") == 0
    # Model label: the served model name (the checkpoint directory's name).
    assert {
        lab.get("model_name")
        for name, lab, _ in after.samples
        if name.startswith(PREFIX + "e2e_request_latency")
    } == {Path(model_dir).name}

    # One INFO line per finished request in tritonserver's log: ids and counts, never the prompt text.
    log = (stack.run_dir / "tritonserver.log").read_text()
    for i, (rid, _) in enumerate(results):
        found = re.findall(
            rf"request {re.escape(rid)} finished: reason=length prompt_tokens={prompts[i]} "
            rf"output_tokens={outputs[i]} ttft=\S+s total=\S+s",
            log,
        )
        assert len(found) == 1, rid
        assert prompt(i) not in log


def test_prefix_cache_hits_in_usage_and_metrics(stack: Stack, model_dir: str) -> None:
    """The same prompt again (completions, then chat; also streamed): it finds its full blocks cached, says so
    in usage.prompt_tokens_details.cached_tokens, gets the same tokens, and the counters grow by the tokens
    looked up and found."""
    long = "Cache probe: " + " ".join(WORDS[::-1] * 3)  # ~50 tokens, 3 full blocks; no other test's prefix
    chat = {"model": "default", "messages": [{"role": "user", "content": long}]}
    before = stack.wait_metrics(lambda page: True)  # what earlier requests queued, applied
    queried = hit = 0
    completion = {"model": "default", "prompt": long}
    for path, body in (("/v1/completions", completion), ("/v1/chat/completions", chat)):
        body = {**body, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
        first = httpx.post(stack.url + path, json=body, timeout=120).json()
        again = httpx.post(stack.url + path, json=body, timeout=120).json()
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", stack.url + path, json=streamed, timeout=120) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        n_prompt = first["usage"]["prompt_tokens"]
        cached = (n_prompt - 1) // 16 * 16
        assert cached >= 32
        assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        assert again["usage"]["prompt_tokens_details"] == {"cached_tokens": cached}
        assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": cached}
        assert again["choices"][0]["token_ids"] == first["choices"][0]["token_ids"]
        queried, hit = queried + 3 * n_prompt, hit + 2 * cached
    queries = PREFIX + "prefix_cache_queries_total"
    after = stack.wait_metrics(lambda page: page.value(queries) - before.value(queries) == queried)
    assert n(after, "prefix_cache_hits_total") - n(before, "prefix_cache_hits_total") == hit
    # Cached blocks count as free once no request holds them.
    assert n(after, "kv_cache_free_blocks") == n(after, "kv_cache_blocks")


def test_every_live_metric_is_documented(stack: Stack) -> None:
    page = stack.scrape()
    live = page.prefixed(PREFIX)
    docs = documented_metrics()
    assert live, "no paddlellm metrics on /metrics"
    assert live <= set(docs), f"undocumented on the live page: {sorted(live - set(docs))}"
    for family in live:
        assert page.types[family] == docs[family], family
    # The launcher's restart counter too: these stacks run under the launcher.
    # A feature's series (only_with: speculative decoding, on by default) show once it has reported.
    specs = ENGINE_METRICS + GATEWAY_METRICS + LAUNCHER_METRICS
    assert live - {s.name for s in specs if s.only_with} == {s.name for s in specs if not s.only_with}
    # Engine lines are passed on verbatim: the same lines as Triton's own page.
    endpoints = json.loads((stack.run_dir / "endpoints.json").read_text())
    triton = httpx.get(endpoints["triton_metrics"], timeout=10).text
    ours = [line for line in triton.splitlines() if line.startswith("# TYPE paddlellm:")]
    assert ours and all(line in httpx.get(stack.metrics_url, timeout=10).text.splitlines() for line in ours)


def test_metrics_served_where_the_flags_say(stack: Stack) -> None:
    main = httpx.get(stack.url + "/metrics", timeout=10)
    if stack.metrics_port == stack.port:
        assert main.status_code == 200 and "paddlellm:requests_number_total" in main.text
    else:
        assert main.status_code == 404
        settings = json.loads((stack.run_dir / "gateway.json").read_text())
        assert settings["metrics_port"] == stack.metrics_port
        # Each worker that served requests wrote its own values file; /metrics summed them (the workload
        # test checked the sum). Both workers got some of the 20 concurrent requests.
        files = [p.name for p in (stack.run_dir / "prometheus").iterdir() if p.name.startswith("counter_")]
        assert len(files) == stack.workers, files
