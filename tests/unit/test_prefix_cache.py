"""Prefix caching in the block manager and the scheduler, with the fake executor.

The fake KV cache stores token ids, asserts that a request reads exactly its own tokens from every computed
position and never writes to a block another request holds, and derives each sampled token from what it reads
back: so a cached prefix of other tokens, a shared block written to, or lost KV fails or changes the tokens.
Every workload runs with the cache on and off and must give the same tokens.
"""

import pytest

from paddlellm.config import EngineConfig
from paddlellm.engine.block_manager import BlockManager
from paddlellm.engine.prefix_cache import cache_seed
from paddlellm.sampling import SamplingParams
from tests.unit.engine_fakes import collect, fake_info, make_engine, prompt

BS = 16  # make_engine's block size
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def run_both(reqs: dict, waves: int = 1, **config) -> tuple[dict, dict, object, object]:
    """Run `reqs` (split into `waves` that run one after another) with the cache on and off."""
    results = []
    for enabled in (True, False):
        engine, ex = make_engine(enable_prefix_caching=enabled, **config)
        start = engine.stats().num_free_blocks
        items = list(reqs.items())
        outs = []
        for w in range(waves):
            for rid, (ids, params) in items[w::waves]:
                engine.add_request(rid, ids, params)
            outs.extend(engine.run_until_done())
        assert engine.stats().num_free_blocks == start  # cached blocks count as free
        results.append((collect(outs), engine, ex))
    (on, engine_on, ex_on), (off, _, _) = results
    return on, off, engine_on, ex_on


def first_chunk(ex, rid: str) -> tuple[int, int]:
    """(num_computed_tokens, scheduled tokens) of the step that sent `rid` whole for the first time."""
    for s in ex.calls:
        for n in s.new_requests:
            if n.request_id == rid:
                return n.num_computed_tokens, s.num_scheduled_tokens[rid]
    raise AssertionError(rid)


# ---------------------------------------------------------------- block manager


def test_registered_blocks_are_shared_by_refcount_and_free_when_unheld():
    bm = BlockManager(num_blocks=4, block_size=2)
    a: list[int] = []
    bm.append(a, 4)
    bm.register(a[0], b"k0", [1, 2])
    bm.register(a[1], b"k1", [3, 4])
    b: list[int] = []
    hits = bm.match_prefix([b"k0", b"k1"], [1, 2, 3, 4], max_blocks=2)
    assert hits == a and bm.num_reclaimed(hits) == 0
    bm.take(b, hits)
    assert bm.num_used_blocks == 2
    bm.free(a)
    assert bm.num_used_blocks == 2  # b still holds both
    bm.free(b)
    assert (bm.num_free_blocks, bm.num_cached_blocks) == (4, 2)  # free, and still cached
    c: list[int] = []
    hits = bm.match_prefix([b"k0", b"k1"], [1, 2, 3, 4], max_blocks=1)
    assert len(hits) == 1 and bm.num_reclaimed(hits) == 1
    bm.take(c, hits)
    assert bm.num_free_blocks == 3
    held = list(c)
    bm.free(c)
    with pytest.raises(RuntimeError, match="freed twice or never allocated"):
        bm.free(held)  # freed twice


def test_match_stops_at_a_key_whose_tokens_differ():
    bm = BlockManager(num_blocks=2, block_size=2)
    a: list[int] = []
    bm.append(a, 4)
    bm.register(a[0], b"k0", [1, 2])
    bm.register(a[1], b"k1", [3, 4])
    assert bm.match_prefix([b"k0", b"k1"], [1, 2, 3, 5], 2) == a[:1]  # a (pretend) key collision is refused
    assert bm.match_prefix([b"x", b"k1"], [1, 2, 3, 4], 2) == []


def test_eviction_takes_plain_free_blocks_first_then_least_recently_released():
    bm = BlockManager(num_blocks=4, block_size=1)
    tables = [[], [], []]
    for i, t in enumerate(tables):
        bm.append(t, 1)
        bm.register(t[0], bytes([i]), [i])
    for t in (tables[1], tables[0], tables[2]):
        bm.free(t)  # release order: 1, 0, 2
    assert bm.num_free_blocks == 4 and bm.num_cached_blocks == 3
    new: list[int] = []
    bm.append(new, 1)  # the one never-cached block
    assert bm.num_cached_blocks == 3
    bm.append(new, 3)  # evicts 1, then 0
    assert bm.match_prefix([bytes([2])], [2], 1) != [] and bm.num_cached_blocks == 1
    assert bm.match_prefix([bytes([1])], [1], 1) == bm.match_prefix([bytes([0])], [0], 1) == []


def test_a_second_copy_of_cached_content_stays_private():
    bm = BlockManager(num_blocks=2, block_size=1)
    a: list[int] = []
    b: list[int] = []
    bm.append(a, 1)
    bm.append(b, 1)
    bm.register(a[0], b"k", [7])
    bm.register(b[0], b"k", [7])  # computed concurrently by another request
    bm.free(b)
    assert bm.num_cached_blocks == 1 and bm.match_prefix([b"k"], [7], 1) == a


def test_the_key_covers_model_and_every_value_changing_option():
    info = fake_info()
    base = EngineConfig(model="m")
    seeds = {
        cache_seed(base.replace(**change), info)
        for change in (
            {},
            {"model": "other"},
            {"dtype": "bfloat16"},
            {"quantization": "wint4"},
            {"cpu_kernels": "avx2"},
            {"tensor_parallel_size": 2},
        )
    }
    assert len(seeds) == 6
    same = base.replace(max_num_seqs=3, enable_prefix_caching=False)
    assert cache_seed(same, info) == cache_seed(base, info)


# ---------------------------------------------------------------- scheduler


def test_a_shared_prefix_is_prefilled_once():
    system = prompt(100)  # 6 full blocks + 4 tokens
    reqs = {f"q{i}": (system + prompt(5 + i, 1 + i), GREEDY) for i in range(4)}
    on, off, engine, ex = run_both(reqs, waves=4)
    assert on == off
    assert first_chunk(ex, "q0") == (0, 105)
    assert first_chunk(ex, "q1") == (96, 106 - 96)  # 6 cached blocks, only the rest prefilled
    s = engine.stats()
    assert s.prefix_cache_queries == sum(len(ids) for ids, _ in reqs.values())
    assert s.prefix_cache_hits == 3 * 96


def test_a_prompt_that_is_all_cached_still_computes_its_last_token():
    ids = prompt(64)  # exactly 4 blocks
    reqs = {"a": (ids, GREEDY), "b": (ids, GREEDY), "c": (ids + [5], GREEDY)}
    on, off, _, ex = run_both(reqs, waves=3)
    assert on == off
    assert first_chunk(ex, "b") == (48, 16)  # the last block is recomputed: logits need its last token
    assert first_chunk(ex, "c") == (64, 1)  # a cached prefix plus one token: one token prefilled


def test_multi_turn_history_hits_previous_outputs_too():
    """Each turn's prompt is the last prompt, its answer and a new question: answers' blocks are cached."""
    history = prompt(40)
    engines = [make_engine(enable_prefix_caching=e) for e in (True, False)]
    for turn in range(6):
        got, asked = [], len(history)
        for engine, _ in engines:
            engine.add_request(f"t{turn}", history, SamplingParams(max_tokens=30, temperature=0.0))
            got.append(collect(engine.run_until_done())[f"t{turn}"])
        assert got[0] == got[1]
        history = history + got[0] + prompt(7, turn + 1)
    engine, ex = engines[0]
    computed, _ = first_chunk(ex, "t5")
    # Cached: all but the new question and the last answer's last token (sampled, never computed), in blocks.
    assert computed == (asked - 7 - 1) // BS * BS > 150
    assert engine.stats().num_free_blocks == 64


def test_concurrent_requests_sharing_a_long_system_prompt():
    system = prompt(1000)
    reqs = {
        f"r{i}": (system + prompt(10 + i % 7, 100 + i), SamplingParams(max_tokens=12, temperature=0.0))
        for i in range(32)
    }
    on, off, engine, ex = run_both(reqs, num_blocks=512, max_num_seqs=32, max_num_batched_tokens=2048)
    assert on == off and len(on) == 32
    # r0 and r1 (the first step's budget) both prefill it; the others, admitted later, find it cached.
    assert engine.stats().prefix_cache_hits == 29 * 992


def test_seeded_sampling_is_identical_with_the_cache():
    system = prompt(70)
    reqs = {
        f"s{i}": (system + prompt(3, i), SamplingParams(max_tokens=20, temperature=0.9, seed=i))
        for i in range(6)
    }
    on, off, _, _ = run_both(reqs, waves=2)
    assert on == off


def test_eviction_under_pressure_keeps_tokens_and_frees_everything():
    reqs = {
        f"p{i}": (prompt(40 + 9 * (i % 5), i % 3), SamplingParams(max_tokens=30, temperature=0.0))
        for i in range(20)
    }
    on, off, engine, _ = run_both(reqs, waves=4, num_blocks=12, max_num_seqs=4)
    assert on == off
    s = engine.stats()
    assert s.num_free_blocks == s.num_total_blocks == 12
    assert 0 < engine.scheduler.blocks.num_cached_blocks <= 12


def test_preemption_with_the_cache_recomputes_from_cached_blocks():
    system = prompt(48)
    reqs = {
        f"r{i}": (system + prompt(10 + 7 * i, i), SamplingParams(max_tokens=40, temperature=0.0))
        for i in range(8)
    }
    on, off, engine, ex = run_both(reqs, num_blocks=12, max_num_seqs=8)
    assert on == off and engine.stats().num_preemptions > 0
    # Some recompute (output ids sent again) started from cached blocks.
    assert any(n.output_token_ids and n.num_computed_tokens for s in ex.calls for n in s.new_requests)


def test_abort_releases_shared_blocks():
    engine, _ = make_engine(num_blocks=20)
    system = prompt(64)
    engine.add_request("a", system + [1], GREEDY)
    engine.run_until_done()
    engine.add_request("b", system + [2], SamplingParams(max_tokens=50, temperature=0.0))
    engine.add_request("c", system + [3], SamplingParams(max_tokens=50, temperature=0.0))
    engine.step()
    assert engine.stats().num_free_blocks == 20 - 4 - 2  # 4 shared blocks + one own block each
    engine.abort("b")
    engine.abort("c")
    assert engine.stats().num_free_blocks == 20


def test_admission_counts_reclaimed_cached_blocks_against_the_kv_ratio():
    engine, ex = make_engine(num_blocks=10, kv_cache_ratio=0.5)
    engine.add_request("warm", prompt(64), SamplingParams(max_tokens=1, temperature=0.0))
    engine.run_until_done()  # 4 cached blocks, all free
    engine.add_request("run", prompt(20, 1), SamplingParams(max_tokens=20, temperature=0.0))
    engine.step()  # 2 blocks in use
    engine.add_request("hit", prompt(64) + [9], GREEDY)  # 4 cached + 1 new: 2 + 5 = 7 > 5
    engine.step()
    assert "hit" not in ex.calls[-1].num_scheduled_tokens
    engine.run_until_done()
    assert engine.stats().num_free_blocks == 10


def test_cached_tokens_reach_the_request_output_and_off_means_no_hits():
    for enabled in (True, False):
        engine, _ = make_engine(enable_prefix_caching=enabled)
        engine.add_request("a", prompt(40), GREEDY)
        engine.run_until_done()
        engine.add_request("b", prompt(40), GREEDY)
        outs = engine.run_until_done()
        assert {o.num_cached_tokens for o in outs} == ({32} if enabled else {0})
        assert engine.stats().prefix_cache_hits == (32 if enabled else 0)
        assert engine.stats().prefix_cache_queries == (80 if enabled else 0)


def test_without_shared_prefixes_the_steps_are_the_same():
    """No hits: the model runs exactly the same steps (requests and chunk sizes) with the cache on and off, so
    the cache costs only the scheduler's bookkeeping (benchmarks/prefix_cache.py times it)."""
    reqs = {
        f"u{i}": (prompt(30 + 17 * i, 200 + i), SamplingParams(max_tokens=20 + i, temperature=0.0))
        for i in range(10)
    }
    steps = []
    for enabled in (True, False):
        # Enough blocks for no preemption: a preempted request would find its own blocks cached (a cheaper
        # recompute, test_preemption_with_the_cache_recomputes_from_cached_blocks).
        engine, ex = make_engine(enable_prefix_caching=enabled, num_blocks=40, max_num_batched_tokens=96)
        for rid, (ids, params) in reqs.items():
            engine.add_request(rid, ids, params)
        engine.run_until_done()
        assert engine.stats().prefix_cache_hits == engine.stats().num_preemptions == 0
        steps.append([s.num_scheduled_tokens for s in ex.calls])
    assert steps[0] == steps[1]


def test_a_run_resumed_on_another_instance_misses_and_on_the_same_one_hits():
    """The global scheduler resumes a cut stream on any instance as prompt + the ids already sent. Another
    instance has its own (here: empty) cache and simply prefills it all; the instance that served the cut run
    finds its blocks. Both continue with the uncut run's tokens: no special case."""
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    first, _ = make_engine()
    first.add_request("r", prompt(50), params)
    full = collect(first.run_until_done())["r"]
    cut = 30
    for engine, hits in ((make_engine()[0], 0), (first, (50 + cut - 1) // BS * BS)):
        engine.add_request("again", prompt(50), params, resume_ids=full[:cut])
        outs = engine.run_until_done()
        assert collect(outs)["again"] == full[cut:]
        assert engine.stats().prefix_cache_hits == hits
        assert outs[-1].num_cached_tokens == min(hits, 50)


# ---------------------------------------------------------------- partial hits (blocks larger than 16)


def test_match_partial_finds_the_longest_shared_run_and_forgets_evicted_blocks():
    bm = BlockManager(num_blocks=6, block_size=32)
    shared = list(range(100, 120))  # 20 tokens every candidate starts with
    tables = []
    for k, tail in enumerate(([1] * 12, [7, 7, 7, 7, 2] + [1] * 7, [7, 7, 3] + [1] * 9)):
        t: list[int] = []
        bm.append(t, 32)
        bm.register(t[0], f"k{k}".encode(), shared + tail, parent=b"seed")
        tables.append(t)
    want = shared + [7, 7, 7, 7, 9, 9]
    assert bm.match_partial(b"seed", want, 31) == (tables[1][0], 24)
    assert bm.match_partial(b"seed", want, 22) == (tables[1][0], 22)  # capped: the last token is computed
    assert bm.match_partial(b"other parent", want, 31) is None
    assert bm.match_partial(b"seed", shared[:15] + [5] * 10, 31) is None  # the first 16 must match
    assert bm.match_partial(b"seed", shared[:15], 15) is None  # too few tokens to be worth it
    for t in tables:
        bm.free(t)
    bm.append([], 6 * 32)  # evicts every cached block
    assert bm.match_partial(b"seed", want, 31) is None and bm.num_cached_blocks == 0


def test_a_pinned_partial_source_is_not_handed_out():
    bm = BlockManager(num_blocks=2, block_size=32)
    t: list[int] = []
    bm.append(t, 32)
    bm.register(t[0], b"k", list(range(32)), parent=b"seed")
    bm.free(t)  # cached, evictable: counted as free
    src, rows = bm.match_partial(b"seed", list(range(20)) + [0], 20)
    assert rows == 20 and bm.num_free_blocks == 2
    bm.pin(src)
    assert bm.num_free_blocks == 1
    new: list[int] = []
    assert bm.append(new, 64) is None  # only one block is free
    assert bm.append(new, 32) == [1 - src]
    bm.unpin(src)
    assert bm.num_free_blocks == 1 and bm.match_partial(b"seed", list(range(20)), 20) == (src, 20)


def test_a_system_prompt_ending_mid_block_is_reused_row_for_row():
    """Requests share 90 tokens (one 64-token block and 26 rows of the next) then differ: later requests take
    the full block and copy the 26 rows (a partial hit) instead of computing them; the same tokens as without
    the cache, and the fake KV check sees every copied row hold the request's own tokens. (Only full blocks
    are registered, so the source is an earlier request's second block, filled by its answer.)"""
    system = prompt(90)
    longer = SamplingParams(max_tokens=40, temperature=0.0)  # fills the second block: registered
    reqs = {f"q{i}": (system + prompt(5 + i, 1 + i), longer) for i in range(4)}
    on, off, engine, ex = run_both(reqs, waves=4, block_size=64)
    assert on == off
    assert first_chunk(ex, "q0") == (0, 95)
    assert first_chunk(ex, "q1") == (90, 6)
    copies = [c for s in ex.calls for c in s.block_copies]
    assert len(copies) == 3 and {c.rows for c in copies} == {26}
    assert engine.stats().prefix_cache_hits == 3 * 90


def test_partial_hits_in_one_pass_under_block_pressure():
    """Two requests admitted together copy from one cached block nobody holds, the least recently released,
    while their own blocks must come from the cached ones: the pinned source is never handed out in that pass
    (without the pin the second allocation takes it), tokens match the cache off, all blocks come back."""
    system = prompt(40)
    warm = {"warm": (system + prompt(30, 9), SamplingParams(max_tokens=1, temperature=0.0)),
            "other": (prompt(134, 7), SamplingParams(max_tokens=1, temperature=0.0))}
    reqs = {f"p{i}": (system + prompt(3 + i, 20 + i), SamplingParams(max_tokens=10, temperature=0.0))
            for i in range(2)}
    got, calls = [], []
    for enabled in (True, False):
        engine, ex = make_engine(
            block_size=64, num_blocks=4, kv_cache_ratio=1.0, enable_prefix_caching=enabled
        )
        for wave in (warm, reqs):  # the warm-up leaves 1 plain free block and 3 cached, the source oldest
            for rid, (ids, p) in wave.items():
                engine.add_request(rid, ids, p)
            out = collect(engine.run_until_done())
        got.append(out)
        calls.append(ex.calls)
        assert engine.stats().num_free_blocks == 4
    assert got[0] == got[1]
    admitted = next(s for s in calls[0] if s.new_requests and s.new_requests[0].request_id == "p0")
    assert len(admitted.new_requests) == 2 and [c.rows for c in admitted.block_copies] == [40, 40]


def test_blocks_overlapping_an_image_serve_no_partial_hits():
    import numpy as np

    from paddlellm.engine.prefix_cache import PrefixCache
    from paddlellm.engine.request import Request
    from paddlellm.step_types import ImageInput, MultiModalPrompt

    bm = BlockManager(num_blocks=8, block_size=32)
    cache = PrefixCache(bm, True, b"seed")

    def request(rid: str, ids: list[int], image_at: int | None) -> Request:
        mm = None
        if image_at is not None:
            im = ImageInput(np.zeros((4, 1), np.float32), (1, 2, 2), "h" * 64, image_at, 4)
            mm = MultiModalPrompt((im,), np.zeros((3, len(ids)), np.int64), 0)
        return Request(rid, tuple(ids), GREEDY, 0, 0.0, mm=mm)

    ids = list(range(200, 264))
    for rid, image_at in (("text", None), ("image", 40)):
        r = request(rid, ids, image_at)
        bm.append(r.block_ids, 64)
        r.num_computed_tokens = 64
        cache.register_computed(r)
    # block 0 of both keys alike only for the text request (the image request's digests its image)...
    text_hit = cache.match(request("t2", ids[:50] + [1] * 20, None))
    assert len(text_hit.blocks) == 1 and text_hit.rows == 50 - 32
    # ...and a request with an image at 40 stops its partial run there: 8 rows < 16, no partial hit
    image_hit = cache.match(request("i2", ids[:50] + [1] * 20, 40))
    assert image_hit.rows == 0
