"""Speculative decoding (n-gram drafts) in the engine core: the proposer, the config, and the scheduler's
drafts, acceptance, stop rules and KV rollback, driven by a fake model that often copies its context.

The fake (`CopyingExecutor`) keeps a KV cache of token ids written through each request's block table, and
derives every sampled token from the context it reads back from that cache (up to the row's position, draft
tokens included) and, for seeded sampling, from (seed, position) alone, as the real sampler does. So a draft
that was not rolled back (KV of a rejected token read later), a wrong block table after a cut, a wrong
position or a missing history all change tokens, and the outputs with speculation on must equal those off.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.engine.ngram_proposer import TokenHistory, propose
from paddlellm.errors import ConfigError
from paddlellm.sampling import SamplingParams
from paddlellm.speculative import SpeculativeConfig
from paddlellm.step_types import ModelRunnerOutput, SchedulerOutput
from paddlellm.structured.bitmask import unpack_token_bitmask
from tests.unit.engine_fakes import FakeGrammar, fake_info, fake_logprobs, grammar_params

EOS = 2
VOCAB = 1000
SPEC = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}'


# ---------------------------------------------------------------- proposer


def test_propose_takes_the_longest_suffix_match_and_what_followed():
    seq = np.array([5, 6, 7, 8, 9, 1, 6, 7, 3, 4, 0, 6, 7], dtype=np.int64)
    # suffix [6, 7] occurs at 1-2 (then 8, 9) and at 6-7 (then 3, 4): the latest wins on ties
    assert propose(seq, 2, 2, 4).tolist() == [3, 4]
    # a longer suffix [9, 1, 6, 7] ... here [0, 6, 7] never recurs, so still length 2; make a length-3 match
    seq3 = np.array([4, 6, 7, 8, 9, 0, 6, 7, 3, 4, 0, 6, 7], dtype=np.int64)
    assert propose(seq3, 3, 2, 4).tolist() == [3, 4, 0]  # [0, 6, 7] at 5-7 beats [6, 7] at 1-2
    assert propose(seq3, 10, 2, 4).tolist() == [3, 4, 0, 6, 7]  # cut at the end of the sequence


def test_propose_respects_min_and_max():
    seq = np.array([1, 2, 3, 9, 9, 2, 3], dtype=np.int64)
    assert propose(seq, 3, 3, 4).tolist() == []  # only a 2-token match exists
    assert propose(seq, 3, 2, 4).tolist() == [9, 9, 2]
    assert propose(seq, 3, 1, 1).tolist() == [9, 9, 2]  # max 1: any earlier 3
    assert propose(np.array([7], dtype=np.int64), 3, 1, 4).tolist() == []
    assert propose(np.array([4, 4, 4, 4], dtype=np.int64), 2, 2, 4).tolist() == [4]  # overlapping match


def test_propose_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    for _ in range(300):
        seq = rng.integers(0, 4, size=int(rng.integers(1, 40))).astype(np.int64)
        lo, hi, k = int(rng.integers(1, 4)), 0, int(rng.integers(1, 6))
        hi = lo + int(rng.integers(0, 3))
        want: list[int] = []
        for length in range(hi, lo - 1, -1):
            if length >= len(seq):
                continue
            suffix = seq[len(seq) - length :].tolist()
            ends = [
                e for e in range(length - 1, len(seq) - 1) if seq[e - length + 1 : e + 1].tolist() == suffix
            ]
            if ends:
                want = seq[ends[-1] + 1 : ends[-1] + 1 + k].tolist()
                break
        assert propose(seq, k, lo, hi).tolist() == want, (seq.tolist(), lo, hi, k)


def test_token_history_grows_with_the_outputs():
    h = TokenHistory([1, 2, 3])
    outputs: list[int] = []
    for t in range(100):
        outputs.append(t)
        assert h.sync(outputs).tolist() == [1, 2, 3, *outputs]


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"method": "eagle"}', "method 'eagle' is not supported"),
        ('{"method": "ngram", "num_speculative_token": 3}', "unknown key.*num_speculative_token"),
        ('{"num_speculative_tokens": 3}', "'method' is required"),
        ('{"method": "ngram", "num_speculative_tokens": "3"}', "must be an integer"),
        ('{"method": "ngram", "prompt_lookup_min": 4, "prompt_lookup_max": 2}', "prompt_lookup_min"),
        ('{"method": "ngram"', "not valid JSON"),
    ],
)
def test_bad_speculative_config_fails_naming_the_key(text, match):
    with pytest.raises(ConfigError, match="speculative_config") as e:
        EngineConfig(speculative_config=text)
    assert e.match(match)


def test_speculative_config_defaults_and_off():
    assert EngineConfig().speculative == SpeculativeConfig()  # on by default: k 8, lookup 1-4, batch 1
    assert EngineConfig(speculative_config="").speculative is None
    assert EngineConfig.from_params(EngineConfig(speculative_config="").to_params()).speculative is None
    spec = EngineConfig(speculative_config='{"method": "ngram", "prompt_lookup_max": 1}').speculative
    assert spec == SpeculativeConfig(prompt_lookup_min=1, prompt_lookup_max=1)
    params = EngineConfig(speculative_config=SPEC).to_params()
    assert EngineConfig.from_params(params).speculative == SpeculativeConfig(
        num_speculative_tokens=4, prompt_lookup_min=2
    )


# ---------------------------------------------------------------- the engine with a copying fake model


class CopyingExecutor:
    """A runner that honours drafts: feeds each request's new known tokens then its draft, writes them all to
    the fake KV cache, and samples every row from what it reads back. The "model" mostly repeats the token
    `PERIOD` places back (so n-gram drafts are often right), sometimes a hash of the context, EOS rarely
    (suppressed below min_tokens, as the sampler does); seeded rows add a draw from (seed, position)."""

    PERIOD = 11

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.kv = np.full((num_blocks, block_size), -1, dtype=np.int64)
        self.bs = block_size
        self.state: dict[str, dict] = {}
        self.calls: list[SchedulerOutput] = []

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self.calls.append(sched)
        for rid in sched.finished_request_ids:
            self.state.pop(rid, None)
        for nd in sched.new_requests:
            self.state[nd.request_id] = {
                "tokens": [*nd.prompt_token_ids, *nd.output_token_ids],
                "blocks": list(nd.block_ids),
                "seed": nd.seed,
                "params": nd.sampling_params,
                "computed": nd.num_computed_tokens,
                "prompt": len(nd.prompt_token_ids),
            }
        for cd in sched.cached_requests:
            st = self.state[cd.request_id]
            st["tokens"].extend(cd.new_token_ids)
            if cd.num_kept_blocks >= 0:
                del st["blocks"][cd.num_kept_blocks :]
            st["blocks"].extend(cd.new_block_ids)
            st["computed"] = cd.num_computed_tokens
        holders: dict[int, set[str]] = {}
        for rid, st in self.state.items():
            for b in st["blocks"]:
                holders.setdefault(b, set()).add(rid)
        sampled, logprobs, runs, run_lps = {}, {}, {}, {}
        for rid, n in sched.num_scheduled_tokens.items():
            st = self.state[rid]
            draft = list(sched.draft_token_ids.get(rid, ()))
            start, end = st["computed"], st["computed"] + n
            known_end = end - len(draft)
            assert known_end <= len(st["tokens"]) and len(st["blocks"]) * self.bs >= end
            assert not draft or known_end == len(st["tokens"]), "a draft only after the last known token"
            for b in {st["blocks"][p // self.bs] for p in range(start, end)}:
                assert holders[b] == {rid}, f"{rid} writes block {b}, held by {sorted(holders[b])}"
            assert self._read(st, start) == st["tokens"][:start], f"{rid} reads KV of other tokens"
            feed = st["tokens"][start:known_end] + draft
            for i, tok in enumerate(feed):
                p = start + i
                self.kv[st["blocks"][p // self.bs], p % self.bs] = tok
            st["computed"] = end
            if known_end < len(st["tokens"]):
                continue
            masks = sched.grammar_masks.get(rid)
            if masks is not None:
                masks = masks.reshape(-1, masks.shape[-1])
                assert len(masks) == len(draft) + 1, "one grammar mask per sampled row"
            rows = [
                self._sample(st, known_end + j, None if masks is None else masks[j])
                for j in range(len(draft) + 1)
            ]
            asks = st["params"].logprobs
            if not draft:
                sampled[rid] = rows[0]
                if asks is not None:
                    logprobs[rid] = fake_logprobs(rows[0], known_end, asks)
                continue
            m = 1
            while m <= len(draft) and rows[m - 1] == draft[m - 1]:
                m += 1
            runs[rid] = tuple(rows[:m])
            if asks is not None:
                run_lps[rid] = tuple(fake_logprobs(t, known_end + j, asks) for j, t in enumerate(rows[:m]))
        return ModelRunnerOutput(sampled, logprobs, {}, runs, run_lps)

    def _read(self, st: dict, upto: int) -> list[int]:
        pos = np.arange(upto)
        table = np.asarray(st["blocks"], dtype=np.int64)
        return self.kv[table[pos // self.bs], pos % self.bs].tolist()

    def _sample(self, st: dict, position: int, mask: np.ndarray | None = None) -> int:
        """The token at `position`, from the context in the KV cache (positions < position); with a grammar
        mask, the model's token if allowed, else an allowed one picked by the same hash."""
        ctx = self._read(st, position)
        p = st["params"]
        h = zlib.crc32(np.asarray(ctx[-3:], dtype=np.int64).tobytes() + position.to_bytes(8, "little"))
        if not p.greedy:
            h ^= int(np.random.default_rng([st["seed"] & ((1 << 63) - 1), position]).integers(1 << 30))
        if h % 29 == 0:
            tok = EOS
        elif h % 6 == 0 or len(ctx) < self.PERIOD:
            tok = 3 + h % (VOCAB - 3)
        else:
            tok = ctx[-self.PERIOD]
        if mask is not None:
            allowed = np.flatnonzero(unpack_token_bitmask(mask, VOCAB))
            return tok if tok in allowed else int(allowed[h % len(allowed)])
        if tok == EOS and position - st["prompt"] < p.min_tokens:
            tok = 3 + (h >> 5) % (VOCAB - 3)
        return tok

    def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _engine(spec: str, num_blocks: int = 256, **config) -> tuple[LLMEngine, CopyingExecutor]:
    cfg = EngineConfig(**{"block_size": 8, "max_model_len": 512, "speculative_config": spec, **config})
    ex = CopyingExecutor(num_blocks, cfg.block_size)
    return LLMEngine(cfg, ex, fake_info(VOCAB, (EOS,)), num_blocks=num_blocks), ex


def _prompt(n: int, k: int) -> list[int]:
    return [3 + (37 * i + 11 * k) % 97 for i in range(n)]


def _run(engine: LLMEngine, reqs: dict[str, tuple[list[int], SamplingParams]]):
    for rid, (ids, params) in reqs.items():
        engine.add_request(rid, ids, params)
    tokens: dict[str, list[int]] = {rid: [] for rid in reqs}
    lps: dict[str, list] = {rid: [] for rid in reqs}
    reasons: dict[str, str | None] = {}
    chunks: dict[str, list[int]] = {rid: [] for rid in reqs}
    for out in engine.run_until_done():
        tokens[out.request_id].extend(out.new_token_ids)
        lps[out.request_id].extend(out.logprobs or ())
        if out.new_token_ids:
            chunks[out.request_id].append(len(out.new_token_ids))
        if out.finished:
            reasons[out.request_id] = out.finish_reason
    return tokens, reasons, lps, chunks


def _workload(n: int, max_tokens: int = 60) -> dict[str, tuple[list[int], SamplingParams]]:
    reqs = {}
    for i in range(n):
        kind = i % 4
        params = [
            SamplingParams(max_tokens=max_tokens + i, temperature=0.0),
            SamplingParams(max_tokens=max_tokens - i, temperature=0.8, seed=40 + i),
            SamplingParams(max_tokens=max_tokens, temperature=0.0, min_tokens=30, logprobs=2),
            SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=0.9, seed=7, ignore_eos=True),
        ][kind]
        reqs[f"r{i}"] = (_prompt(20 + 9 * i, i), params)
    return reqs


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize(
    "config",
    [
        {},
        {"max_num_batched_tokens": 24, "max_num_seqs": 8},  # chunked prefill, drafts within the budget
        {"enable_prefix_caching": False},
    ],
    ids=["default", "chunked", "no-prefix-cache"],
)
def test_outputs_are_identical_with_speculation_on_and_off(n, config):
    reqs = _workload(n)
    off, _ = _engine("", **config)
    on, ex = _engine(SPEC.replace("}", ', "disable_by_batch_size": 8}'), **config)
    want = _run(off, reqs)
    got = _run(on, reqs)
    assert got[0] == want[0] and got[1] == want[1]
    assert got[2] == want[2]  # logprobs of the accepted tokens, in order
    stats = on.stats()
    assert stats.spec_num_drafts > 0 and stats.spec_num_accepted_tokens > 0
    assert stats.num_free_blocks == stats.num_total_blocks == 256
    assert sum(stats.spec_accepted_per_position) == stats.spec_num_accepted_tokens
    assert all(s.total_tokens <= on.config.batched_tokens for s in ex.calls)
    assert any(len(c) < len(t) for c, t in zip(got[3].values(), got[0].values(), strict=True)), (
        "an accepted run goes out as one output"
    )


def test_preemption_and_cut_blocks_keep_outputs_identical_and_free_every_block():
    reqs = _workload(8, max_tokens=50)
    want = _run(_engine("", num_blocks=256)[0], reqs)
    tiny, ex = _engine(SPEC.replace("}", ', "disable_by_batch_size": 8}'), num_blocks=24, max_num_seqs=8)
    got = _run(tiny, reqs)
    stats = tiny.stats()
    assert stats.num_preemptions > 0 and stats.spec_num_accepted_tokens > 0
    assert got[0] == want[0] and got[1] == want[1]
    assert stats.num_free_blocks == 24
    assert any(c.num_kept_blocks >= 0 for s in ex.calls for c in s.cached_requests), "no block was cut"


def test_prefix_cache_hits_with_speculation():
    shared = _prompt(64, 99)
    reqs = {
        f"p{i}": (shared + _prompt(5, i), SamplingParams(max_tokens=40, temperature=0.0)) for i in range(4)
    }
    off, on = _engine("")[0], _engine(SPEC)[0]
    want = {rid: _run(off, {rid: r})[0][rid] for rid, r in reqs.items()}
    got = {rid: _run(on, {rid: r})[0][rid] for rid, r in reqs.items()}
    assert got == want
    assert on.stats().prefix_cache_hits > 0 and on.stats().spec_num_accepted_tokens > 0
    # a second round finds the first round's outputs cached too (only verified tokens were registered)
    again = {rid: _run(on, {rid + "b": r})[0][rid + "b"] for rid, r in reqs.items()}
    assert again == want


def test_stop_rules_apply_token_by_token_within_a_run():
    """max_tokens ends a run early; EOS in a run drops what follows; drafts never outrun max_tokens."""
    reqs = {f"m{i}": (_prompt(30, i), SamplingParams(max_tokens=5 + i, temperature=0.0)) for i in range(6)}
    reqs |= {
        f"e{i}": (_prompt(40, 10 + i), SamplingParams(max_tokens=200, temperature=0.0)) for i in range(6)
    }
    # EOS and a stop id inside the prompt: the model copies them, so drafts carry them and a run would go on
    # past them if the stop rules were not applied token by token.
    with_eos = [EOS if i % 7 == 6 else t for i, t in enumerate(_prompt(40, 30))]
    reqs |= {
        f"s{i}": (with_eos[i:], SamplingParams(max_tokens=100, temperature=0.0, stop_token_ids=[with_eos[8]]))
        for i in range(4)
    }
    want = _run(_engine("")[0], reqs)
    on, ex = _engine(SPEC.replace("}", ', "disable_by_batch_size": 16}'), max_num_seqs=16)
    got = _run(on, reqs)
    assert got[0] == want[0] and got[1] == want[1]
    assert "stop" in got[1].values() and "length" in got[1].values()
    for s in ex.calls:
        for rid, d in s.draft_token_ids.items():
            assert s.num_scheduled_tokens[rid] == 1 + len(d)


def test_no_drafts_above_disable_by_batch_size_or_with_a_grammar_free_budget():
    reqs = _workload(6)
    on, ex = _engine(SPEC.replace("}", ', "disable_by_batch_size": 2}'))
    _run(on, reqs)
    running_counts = [len(s.num_scheduled_tokens) for s in ex.calls if s.draft_token_ids]
    assert running_counts and max(running_counts) <= 2


def test_requests_with_a_grammar_draft_under_a_mask_per_position():
    """A grammar forcing a word copied from the prompt, then a free tail: drafts run under one mask per
    position (the matcher advanced over the draft and rolled back); outputs equal those without speculation,
    and a draft the grammar refuses is cut."""
    base = _prompt(60, 3)
    word = base[10:40]

    def run(spec: str):
        engine, ex = _engine(spec)
        grammars = {}
        for i in range(3):
            g = FakeGrammar(word[i:], tail=base[:5], end="eos", vocab_size=VOCAB, eos=EOS)
            grammars[f"g{i}"] = g
            engine.add_request(f"g{i}", base, grammar_params(max_tokens=60, temperature=0.0), grammar=g)
        tokens: dict[str, list[int]] = {}
        reasons = {}
        for out in engine.run_until_done():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finished:
                reasons[out.request_id] = out.finish_reason
        return tokens, reasons, engine, ex, grammars

    want = run("")
    got = run(SPEC.replace("}", ', "disable_by_batch_size": 8}'))
    assert got[:2] == want[:2]
    assert all(t[: len(word) - i] == word[i:] for i, t in enumerate(want[0].values()))
    stats = got[2].stats()
    assert stats.spec_num_accepted_tokens >= len(word) // 2 and stats.num_free_blocks == 256
    drafted = [s for s in got[3].calls if s.draft_token_ids]
    assert any(s.grammar_masks[r].ndim == 2 for s in drafted for r in s.draft_token_ids)
    for g in got[4].values():  # the matchers ended where the outputs did (rollbacks left nothing behind)
        assert all(len(m.accepted) <= 60 for m in g.matchers)
