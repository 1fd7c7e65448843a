"""Speculative decoding (n-gram drafts) over real checkpoints: outputs bit-identical with it on and off.

Why it can be exact: the runner samples draft row j with the request's own draw for that position and the
draft's first j tokens as history, and a row's logits are the same bits in a chunk as in a single-token decode
(batch-invariant kernels, docs/prefix-caching.md). These tests check it on random-weight Llama and Qwen2
checkpoints (on each kernel ISA the model tests use) and on the default model (wint4 and fp32) with prompts it
copies from, greedy and seeded, across batch sizes, preemption, chunked prefill and prefix-cache hits, and
that every KV block is free again afterwards.
"""

from __future__ import annotations

import pytest

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.sampling import SamplingParams
from tests.kernel_choices import model_kernels

pytest.importorskip("paddle", exc_type=ModuleNotFoundError)
import paddlellm.executor.inproc  # noqa: E402, F401

SPEC = (
    '{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2, "prompt_lookup_max": 4, '
    '"disable_by_batch_size": 16}'
)


def _engine(path: str, spec: str, **cfg) -> LLMEngine:
    base = {
        "block_size": 16,
        "max_model_len": 1024,
        "num_gpu_blocks_override": 256,
        "max_num_seqs": 16,
        "num_threads": 2,
        "speculative_config": spec,
    }
    return LLMEngine.create(EngineConfig(model=path, **{**base, **cfg}))


def _run(engine: LLMEngine, reqs: dict[str, tuple[list[int], SamplingParams]]):
    for rid, (ids, params) in reqs.items():
        engine.add_request(rid, ids, params)
    tokens: dict[str, list[int]] = {rid: [] for rid in reqs}
    lps: dict[str, list] = {rid: [] for rid in reqs}
    reasons = {}
    for out in engine.run_until_done():
        tokens[out.request_id].extend(out.new_token_ids)
        lps[out.request_id].extend(out.logprobs or ())
        if out.finished:
            reasons[out.request_id] = out.finish_reason
    return tokens, reasons, lps


def _repetitive(n: int, k: int) -> list[int]:
    """A prompt that repeats a 23-token phrase: n-gram drafts have something to copy."""
    phrase = [(97 * i + 31 * k + 5) % 3000 + 100 for i in range(23)]
    return (phrase * (n // 23 + 1))[:n]


def _workload(n: int) -> dict[str, tuple[list[int], SamplingParams]]:
    kinds = [
        SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=36, temperature=0.8, top_p=0.9, seed=11, ignore_eos=True),
        SamplingParams(max_tokens=30, temperature=0.0, frequency_penalty=0.5, presence_penalty=0.3),
        SamplingParams(max_tokens=30, temperature=0.7, seed=5, min_tokens=20, logprobs=2),
    ]
    return {f"r{i}": (_repetitive(30 + 17 * i, i), kinds[i % 4]) for i in range(n)}


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def ckpt(request, tiny_checkpoint) -> str:
    return tiny_checkpoint(arch=request.param, tokenizer="llama2", seed=7)


@pytest.mark.parametrize("kernels", model_kernels())
def test_random_weights_identical_on_and_off_alone_and_batched(ckpt, kernels):
    reqs = _workload(8)
    off = _engine(ckpt, "", cpu_kernels=kernels)
    on = _engine(ckpt, SPEC, cpu_kernels=kernels)
    for batch in ({rid: reqs[rid]} for rid in list(reqs)[:4]):
        assert _run(on, batch) == _run(off, batch)
    assert _run(on, reqs) == _run(off, reqs)
    stats = on.stats()
    assert stats.spec_num_drafts > 0 and stats.spec_num_accepted_tokens > 0
    assert stats.num_free_blocks == stats.num_total_blocks == 256


def test_random_weights_preemption_chunked_prefill_and_prefix_hits(ckpt):
    reqs = _workload(8)
    want = _run(_engine(ckpt, ""), reqs)
    tiny = _engine(ckpt, SPEC, num_gpu_blocks_override=14)  # 224 tokens of KV for ~8 x 130
    assert _run(tiny, reqs) == want
    assert tiny.stats().num_preemptions > 0 and tiny.stats().spec_num_accepted_tokens > 0
    assert tiny.stats().num_free_blocks == 14
    chunked = _engine(ckpt, SPEC, max_num_batched_tokens=40)
    assert _run(chunked, reqs) == want
    again = {rid + "b": r for rid, r in reqs.items()}  # the same prompts: prefix-cache hits
    got = _run(chunked, again)
    assert {rid[:-1]: v for rid, v in got[0].items()} == want[0]
    assert chunked.stats().prefix_cache_hits > 0
    assert chunked.stats().num_free_blocks == 256


REWRITE = (
    "Rewrite this code, renaming the function total to sum_all:\n"
    "def total(values):\n    result = 0\n    for v in values:\n        result += v\n    return result\n\n"
    "print(total([1, 2, 3]))\n"
)
STORY = "Write a short story about a lighthouse keeper."


@pytest.mark.parametrize(
    "quantization, spec",
    [("auto", SPEC), ("none", SPEC), ("auto", '{"method": "ngram", "disable_by_batch_size": 8}')],
    ids=["wint4", "fp32", "wint4-defaults"],
)
def test_default_model_identical_on_and_off(default_model_dir, quantization, spec):
    from paddlellm.text.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(default_model_dir)
    prompts = [tok.encode_chat([{"role": "user", "content": c}]) for c in (REWRITE, STORY, REWRITE + "#")]
    params = [
        SamplingParams(max_tokens=96, temperature=0.0),
        SamplingParams(max_tokens=64, temperature=0.7, top_p=0.9, seed=3),
        SamplingParams(max_tokens=96, temperature=0.6, seed=9, logprobs=1),
    ]
    reqs = {f"q{i}": (p, sp) for i, (p, sp) in enumerate(zip(prompts, params, strict=True))}
    off = _engine(default_model_dir, "", quantization=quantization, max_model_len=2048)
    on = _engine(default_model_dir, spec, quantization=quantization, max_model_len=2048)
    for rid, r in reqs.items():
        assert _run(on, {rid: r}) == _run(off, {rid: r}), rid
    assert _run(on, reqs) == _run(off, reqs)
    stats = on.stats()
    assert stats.spec_num_accepted_tokens > 20, stats
    assert stats.num_free_blocks == stats.num_total_blocks


def test_tp2_with_speculation_matches_tp1_without(tiny_checkpoint):
    """The scheduler decides the drafts; both ranks verify the same rows (rank 0's output is read)."""
    path = tiny_checkpoint(arch="llama", tokenizer="llama2", seed=11)
    reqs = _workload(6)
    one = _engine(path, "", num_threads=1)
    want = _run(one, reqs)
    one.shutdown()
    two = _engine(path, SPEC, tensor_parallel_size=2, num_threads=1)
    try:
        # tokens and finish reasons; logprobs differ in the last bits (TP sums in another order, as without
        # speculation: tests/tp/test_tp_logprobs.py)
        assert _run(two, reqs)[:2] == want[:2]
        assert two.stats().spec_num_accepted_tokens > 0
        assert two.stats().num_free_blocks == 256
    finally:
        two.shutdown()


def test_default_model_structured_output_identical_on_and_off(default_model_dir):
    """Grammar requests draft under one mask per position: JSON that copies the prompt's values, greedy and
    seeded, the same tokens with speculation on and off."""
    from paddlellm.structured.spec import StructuredSpec
    from paddlellm.text.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(default_model_dir)
    text = (
        "Return this record as JSON with keys name, city and note: name Anna Schmidt, city Hamburg, note "
        "the meeting is moved from Tuesday to Thursday at 10 am in room 204. The meeting is on Thursday at "
        "10 am in room 204. Anna Schmidt, Hamburg."
    )
    ids = tok.encode_chat([{"role": "user", "content": text}])
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "city": {"type": "string"}, "note": {"type": "string"}},
        "required": ["name", "city", "note"],
    }
    pattern = (
        r"The meeting is on (Tuesday|Thursday) at (10|11) am in room (204|305)\. Anna Schmidt, Hamburg\."
    )
    reqs = {
        # a regex leaves few tokens at each position: a row sampled under another position's mask would
        # draw another token
        "regex": (
            ids,
            SamplingParams(max_tokens=60, temperature=0.0, structured_outputs=StructuredSpec.regex(pattern)),
        ),
        "schema": (
            ids,
            SamplingParams(
                max_tokens=80, temperature=0.0, structured_outputs=StructuredSpec.json_schema(schema)
            ),
        ),
        "object": (
            ids,
            SamplingParams(
                max_tokens=80, temperature=0.7, seed=5, structured_outputs=StructuredSpec.json_object()
            ),
        ),
    }
    off = _engine(default_model_dir, "", max_model_len=2048)
    on = _engine(default_model_dir, SPEC, max_model_len=2048)
    for rid, r in reqs.items():
        assert _run(on, {rid: r}) == _run(off, {rid: r}), rid
    assert _run(on, reqs) == _run(off, reqs)
    stats = on.stats()
    assert stats.spec_num_accepted_tokens > 10, stats
    assert stats.num_free_blocks == stats.num_total_blocks
