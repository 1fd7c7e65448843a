"""Prefix caching over the default model: bit-exact KV and logits; the same tokens with the cache on and off.

Why it can be exact: every kernel is batch-invariant (a row's result depends on neither the batch nor the
thread count) and the attention takes each query over its request's cached KV rows the same way in a decode,
a prefill chunk or a whole prefill. So the KV of a token, computed alone (decode), in a chunk or in a whole
prefill, is the same bits, and a suffix prefilled over a cached prefix gives the logits of a full prefill.
The runner-level test checks those bits directly; the engine-level tests check the issue's workloads.
"""

from __future__ import annotations

import numpy as np
import pytest

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.sampling import SamplingParams

pytest.importorskip("paddle", exc_type=ModuleNotFoundError)

import paddle  # noqa: E402

from paddlellm.layers.attention import SeqSpan  # noqa: E402
from paddlellm.model_info import ModelInfo  # noqa: E402
from paddlellm.text.tokenizer import TextTokenizer  # noqa: E402
from paddlellm.worker.model_runner import ModelRunner  # noqa: E402
from tests.kernel_choices import model_kernels  # noqa: E402

SYSTEM = "You are a helpful assistant."
FIRST = "List 3 countries and their capitals."
FOLLOW_UPS = (
    "Which of them is the largest?",
    "Tell me one fact about its capital.",
    "Now list 2 more countries.",
    "What languages are spoken there?",
    "Summarize our conversation in one sentence.",
)


def _chunks_logits_kv(runner: ModelRunner, ids: list[int], chunks: list[int], table: list[int]):
    """Compute `ids` in steps of `chunks` tokens over block table `table`; the logits of every row and the
    K/V rows of every layer at the sequence's slots."""
    rows, start = [], 0
    with paddle.no_grad():
        for n in chunks:
            hidden = runner._forward(
                np.asarray(ids[start : start + n], dtype=np.int64),
                np.arange(start, start + n),
                [SeqSpan(start, n, table)],
                num_decode=1 if n == 1 else 0,
            )
            rows.append(runner.model.logits(hidden).numpy())
            start += n
    bs, slots = runner.block_size, runner.cache.num_slots
    pos = np.arange(len(ids))
    slot = np.asarray(table)[pos // bs] * bs + pos % bs
    heads = 2 * runner.kv_heads
    kv_rows = (np.arange(heads)[:, None] * slots + slot[None, :]).reshape(-1)
    kv = [layer.numpy()[kv_rows] for layer in runner.cache.layers]
    return np.concatenate(rows), kv


@pytest.mark.parametrize(
    "options",
    [
        {"quantization": "none"},
        {"quantization": "auto"},
        {"quantization": "none", "dtype": "bfloat16"},
        {"quantization": "auto", "enforce_eager": True},
        {"quantization": "auto", "cpu_kernels": "avx2"},
    ],
    ids=["fp32", "auto", "bf16", "auto-eager", "auto-avx2"],
)
def test_suffix_over_cached_prefix_is_bit_exact(default_model_dir, options):
    """A whole prefill vs the same tokens as a prefix (prefill), then its answer token by token (decodes),
    then the rest (one chunk over the cached KV): the same logits and KV, bit for bit."""
    if options.get("cpu_kernels") == "avx2" and "avx2" not in model_kernels()[1:]:
        if model_kernels() == ["avx2"]:
            pytest.skip("the AVX2 kernels are this CPU's best: the 'auto' case ran them")
        pytest.skip(f"no AVX2 kernels on this CPU (kernel choices {model_kernels()})")  # not allowed in CI
    cfg = EngineConfig(model=default_model_dir, block_size=16, max_model_len=512, num_threads=2, **options)
    runner = ModelRunner(cfg, ModelInfo.from_dir(default_model_dir), num_blocks=32)
    ids = [(7919 * i + 13) % 49000 + 10 for i in range(150)]
    whole, kv_whole = _chunks_logits_kv(runner, ids, [150], list(range(10)))
    split, kv_split = _chunks_logits_kv(runner, ids, [64, *([1] * 16), 70], list(range(10, 20)))
    assert np.array_equal(whole, split)
    assert all(np.array_equal(a, b) for a, b in zip(kv_whole, kv_split, strict=True))


def _engine(model: str, enabled: bool, **cfg) -> LLMEngine:
    base = {"max_model_len": 2048, "num_threads": 2, "quantization": "auto", "max_num_seqs": 8}
    return LLMEngine.create(EngineConfig(model=model, enable_prefix_caching=enabled, **{**base, **cfg}))


def _run(engine: LLMEngine, reqs: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[int]]:
    for rid, (ids, params) in reqs.items():
        engine.add_request(rid, ids, params)
    got: dict[str, list[int]] = {rid: [] for rid in reqs}
    for out in engine.run_until_done():
        got[out.request_id].extend(out.new_token_ids)
    return got


@pytest.fixture(scope="module")
def tok(default_model_dir) -> TextTokenizer:
    return TextTokenizer.from_dir(default_model_dir)


def test_six_turn_chat_and_a_prefix_plus_one_token(default_model_dir, tok):
    """The seed's conversation continued for 6 turns (each turn resends the history); then a request whose
    prompt is a cached prompt plus one token, and seeded sampling: the same tokens, cache on or off."""
    transcripts, engines = [], []
    for enabled in (True, False):
        engine = _engine(default_model_dir, enabled)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": FIRST}]
        answers, prompts = [], []
        for turn in range(6):
            ids = tok.encode_chat(messages)
            prompts.append(ids)
            rid = f"t{turn}"
            got = _run(engine, {rid: (ids, SamplingParams(max_tokens=48, temperature=0.0))})[rid]
            answers.append(got)
            messages.append({"role": "assistant", "content": tok.decode(got)})
            if turn < 5:
                messages.append({"role": "user", "content": FOLLOW_UPS[turn]})
        one_more = prompts[-1] + tok.encode(" Also", add_special_tokens=False)[:1]
        extra = _run(
            engine,
            {
                "plus_one": (one_more, SamplingParams(max_tokens=16, temperature=0.0)),
                "seeded": (prompts[3], SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=42)),
            },
        )
        transcripts.append((answers, extra))
        engines.append(engine)
    assert transcripts[0] == transcripts[1]
    on = engines[0].stats()
    assert on.prefix_cache_hits > 0.5 * on.prefix_cache_queries  # later turns reuse the history
    assert engines[1].stats().prefix_cache_queries == 0
    for engine in engines:
        assert engine.stats().num_free_blocks == engine.stats().num_total_blocks
        engine.shutdown()


@pytest.mark.slow  # ~1 min: with the cache off it prefills 32 x ~1,000 tokens
@pytest.mark.timeout(900)  # 183 s on the 2-core box at load ~10
def test_32_concurrent_requests_sharing_a_long_system_prompt(default_model_dir, tok):
    system = SYSTEM + " " + " ".join(f"Rule {i}: answer briefly about topic {i}." for i in range(76))
    reqs = {}
    for i in range(32):
        question = {"role": "user", "content": f"Q{i}: {i}+1?"}
        ids = tok.encode_chat([{"role": "system", "content": system}, question])
        reqs[f"r{i}"] = (ids, SamplingParams(max_tokens=6, temperature=0.0 if i % 4 else 0.7, seed=i))
    assert 950 <= len(reqs["r0"][0]) <= 1100
    got = []
    for enabled in (True, False):
        engine = _engine(default_model_dir, enabled, max_num_seqs=32, num_gpu_blocks_override=640)
        got.append(_run(engine, reqs))
        assert engine.stats().num_free_blocks == 640
        if enabled:
            # The first step's 2048-token budget admits r0, r1 and the start of r2 before anything is cached;
            # the other 29 find the 15 full blocks of the system prompt.
            assert engine.stats().prefix_cache_hits >= 29 * 960
        engine.shutdown()
    assert got[0] == got[1]


def test_eviction_under_a_small_kv_budget(default_model_dir, tok):
    """8 blocks of 64 tokens hold two or three requests: cached blocks are evicted (LRU) and requests are
    preempted, yet every request gets the tokens it gets with the cache off, and all blocks come back."""
    prompts = [
        tok.encode_chat([{"role": "system", "content": SYSTEM + " " + "Be concise. " * (30 + 12 * (i % 3))},
                         {"role": "user", "content": q}])
        for i, q in enumerate((FIRST, *FOLLOW_UPS, FIRST))
    ]
    reqs = {
        f"p{i}": (ids, SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True))
        for i, ids in enumerate(prompts)
    }
    got = []
    for enabled in (True, False):
        engine = _engine(
            default_model_dir, enabled, num_gpu_blocks_override=8, max_num_seqs=3, kv_cache_ratio=1.0
        )
        tokens: dict[str, list[int]] = {}
        for wave in (list(reqs)[:4], list(reqs)[4:]):
            tokens |= _run(engine, {r: reqs[r] for r in wave})
        got.append(tokens)
        s = engine.stats()
        assert s.num_free_blocks == s.num_total_blocks == 8 and s.num_preemptions > 0
        if enabled:
            assert s.prefix_cache_hits > 0 and engine.scheduler.blocks.num_evictions > 0
        engine.shutdown()
    assert got[0] == got[1]


def test_the_default_system_prompt_is_reused_through_partial_hits(default_model_dir, tok):
    """SmolLM2's template writes a 26-token default system prompt (and a user turn's opening) ahead of every
    question: inside the first 64-token block, so only a partial hit reuses it. Distinct questions one after
    another, greedy and seeded: the same tokens with the cache on and off, and each later request's copied
    rows are exactly its longest common prefix with an earlier prompt."""
    questions = [f"Question {i}: explain how {t} work and why they matter, for a curious child. Give two "
                 f"concrete examples, one surprising fact, and end with a short practical tip."
                 for i, t in enumerate(("tides", "glaciers", "vaccines", "bridges", "compilers", "clocks"))]
    prompts = [tok.encode_chat([{"role": "user", "content": q}]) for q in questions]
    assert all(64 < len(p) < 128 for p in prompts)  # each fills its first block: registered after its prefill
    reqs = {f"q{i}": (ids, SamplingParams(max_tokens=12, temperature=0.0 if i % 2 else 0.7, seed=i))
            for i, ids in enumerate(prompts)}
    got = []
    for enabled in (True, False):
        engine = _engine(default_model_dir, enabled)
        tokens: dict[str, list[int]] = {}
        for rid in reqs:  # one after another: each finds the earlier ones' first blocks
            tokens |= _run(engine, {rid: reqs[rid]})
        got.append(tokens)
        if enabled:
            def lcp(a: list[int], b: list[int]) -> int:
                n = 0
                while n < min(len(a), len(b)) and a[n] == b[n]:
                    n += 1
                return n

            want = sum(max(lcp(p, q[:64]) for q in prompts[:i]) for i, p in enumerate(prompts) if i)
            assert want >= 5 * 26 and engine.stats().prefix_cache_hits == want
        assert engine.stats().num_free_blocks == engine.stats().num_total_blocks
        engine.shutdown()
    assert got[0] == got[1]
