"""Test doubles for the engine core: a deterministic numpy "model" behind the real SchedulerOutput protocol.

FakeExecutor keeps per-request state the way a model runner must (full state from NewRequestData, only the
changes from CachedRequestData), writes every computed token into a fake KV cache through the request's block
table, and derives each sampled token from the context it reads back from that cache. So a wrong block table,
a write to a block another request holds, lost KV, a bad chunk boundary, a wrong recompute or a cached prefix
of other tokens all fail an assertion or change the tokens.

Logprobs: for requests that ask, each sampled token gets `fake_logprobs(token, position)` and each computed
prompt position p >= 1 gets `fake_logprobs(prompt[p], p)`, so tests know every expected entry.

Structured output: a row with a grammar mask draws (by the same hash) among the tokens its mask allows, EOS
only when nothing else is allowed (unless `ignore_masks`, which draws as if there were no mask: a model
that disobeys). `FakeGrammar` is a grammar over the fake vocabulary driven like GrammarMatcher, and
`FakeCompiler` hands out futures the test resolves.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.errors import EngineDead
from paddlellm.model_info import ModelInfo
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import ModelRunnerOutput, SchedulerOutput, TokenLogprobs
from paddlellm.structured.bitmask import mask_words, pack_token_bitmask, unpack_token_bitmask
from paddlellm.structured.matcher import GrammarBudgetExceeded
from paddlellm.structured.spec import StructuredSpec


def fake_info(vocab_size: int = 1000, eos: tuple[int, ...] = (2,)) -> ModelInfo:
    return ModelInfo(
        path="/nonexistent",
        architecture="LlamaForCausalLM",
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=None,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        attention_bias=False,
        qk_norm=False,
        eos_token_ids=eos,
        bos_token_id=1,
        raw_config={},
    )


@dataclass
class _State:
    tokens: list[int]
    blocks: list[int]
    seed: int
    sampling_params: SamplingParams
    num_computed: int
    num_prompt: int = 0
    history: list[int] = field(default_factory=list)  # chunk sizes this request was run with


class FakeExecutor:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        vocab_size: int = 1000,
        fail_on_call: int | None = None,
        avoid: tuple[int, ...] = (2,),
        ignore_masks: bool = False,
    ) -> None:
        self.kv = np.full((num_blocks, block_size), -1, dtype=np.int64)
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.state: dict[str, _State] = {}
        self.calls: list[SchedulerOutput] = []
        self.fail_on_call = fail_on_call
        self.avoid = set(
            avoid
        )  # tokens the "model" never picks unless asked (EOS), so lengths are predictable
        self.dead = False
        self.shut_down = False
        self.ignore_masks = ignore_masks

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self.calls.append(sched)
        if self.fail_on_call is not None and len(self.calls) >= self.fail_on_call:
            self.dead = True
            raise EngineDead("fake worker died")
        assert not sched.is_empty, "the engine must not run empty steps"
        for rid in sched.finished_request_ids:
            self.state.pop(rid, None)
        for nd in sched.new_requests:
            self.state[nd.request_id] = _State(
                list(nd.prompt_token_ids) + list(nd.output_token_ids),
                list(nd.block_ids),
                nd.seed,
                nd.sampling_params,
                nd.num_computed_tokens,
                len(nd.prompt_token_ids),
            )
        for c in sched.block_copies:  # partial prefix hits: rows of a cached block into a fresh one
            assert c.src != c.dst and 0 < c.rows < self.block_size, c
            assert c.src not in {c2.dst for c2 in sched.block_copies}, "a source is overwritten by a copy"
            self.kv[c.dst, : c.rows] = self.kv[c.src, : c.rows]
        for cd in sched.cached_requests:
            st = self.state[cd.request_id]
            assert st.num_computed == cd.num_computed_tokens, (cd, st.num_computed)
            st.tokens.extend(cd.new_token_ids)
            st.blocks.extend(cd.new_block_ids)
        holders: dict[int, set[str]] = {}
        for rid, st in self.state.items():
            for b in st.blocks:
                holders.setdefault(b, set()).add(rid)
        sampled: dict[str, int] = {}
        logprobs: dict[str, TokenLogprobs] = {}
        prompt_logprobs: dict[str, tuple[int, tuple[TokenLogprobs, ...]]] = {}
        for rid, n in sched.num_scheduled_tokens.items():
            st = self.state[rid]
            start, end = st.num_computed, st.num_computed + n
            assert 0 < n and end <= len(st.tokens), (rid, start, n, len(st.tokens))
            assert len(st.blocks) * self.block_size >= end, "block table too short"
            # Shared blocks (a cached prefix) are only read: every block written is its writer's alone, and
            # the KV already there is exactly this request's tokens.
            for b in {st.blocks[pos // self.block_size] for pos in range(start, end)}:
                assert holders[b] == {rid}, f"{rid} writes block {b}, held by {sorted(holders[b])}"
            pos = np.arange(start)
            table = np.asarray(st.blocks, dtype=np.int64)
            seen = self.kv[table[pos // self.block_size], pos % self.block_size]
            assert seen.tolist() == st.tokens[:start], f"{rid} reads KV of other tokens"
            for pos in range(start, end):
                self.kv[st.blocks[pos // self.block_size], pos % self.block_size] = st.tokens[pos]
            st.num_computed = end
            st.history.append(n)
            n_top = st.sampling_params.prompt_logprobs
            if n_top is not None and start < st.num_prompt - 1:
                stop = min(end, st.num_prompt - 1)
                entries = tuple(fake_logprobs(st.tokens[j + 1], j + 1, n_top) for j in range(start, stop))
                prompt_logprobs[rid] = (start + 1, entries)
            if end == len(st.tokens):
                sampled[rid] = tok = self._next_token(st, sched.grammar_masks.get(rid))
                if st.sampling_params.logprobs is not None:
                    logprobs[rid] = fake_logprobs(tok, end, st.sampling_params.logprobs)
        return ModelRunnerOutput(sampled, logprobs, prompt_logprobs)

    def _next_token(self, st: _State, mask: np.ndarray | None = None) -> int:
        pos = np.arange(st.num_computed)
        ctx = self.kv[np.asarray(st.blocks)[pos // self.block_size], pos % self.block_size]
        h = zlib.crc32(ctx.tobytes())
        if not st.sampling_params.greedy:
            rng = np.random.default_rng([st.seed & ((1 << 64) - 1), st.num_computed])
            h += int(rng.integers(self.vocab_size))
        if mask is not None and not self.ignore_masks:
            allowed = np.flatnonzero(unpack_token_bitmask(mask, self.vocab_size))
            preferred = allowed[~np.isin(allowed, sorted(self.avoid))]
            if not len(preferred):
                preferred = allowed
            assert len(preferred), "a mask that allows nothing"
            return int(preferred[h % len(preferred)])
        tok = h % self.vocab_size
        while tok in self.avoid:
            tok = (tok + 1) % self.vocab_size
        return tok

    def check_health(self) -> None:
        if self.dead:
            raise EngineDead("fake worker died")

    def shutdown(self) -> None:
        self.shut_down = True


def fake_logprobs(token: int, position: int, n_top: int = 0) -> TokenLogprobs:
    """The fake model's entry for `token` at `position` (a pure function, so recomputes agree)."""
    lp = -((token * 7 + position) % 50) / 10
    return TokenLogprobs(token, lp, 1 + position % 3, tuple((token + k, lp - k) for k in range(n_top)))


def make_engine(
    num_blocks: int = 64,
    vocab_size: int = 1000,
    eos: tuple[int, ...] = (2,),
    clock=None,
    fail_on_call: int | None = None,
    grammar_compiler=None,
    ignore_masks: bool = False,
    **config,
) -> tuple[LLMEngine, FakeExecutor]:
    # Speculation (on by default) only with a test's own speculative_config: the fakes here test other things.
    cfg = EngineConfig(**{"block_size": 16, "max_model_len": 2048, "speculative_config": "", **config})
    ex = FakeExecutor(
        num_blocks,
        cfg.block_size,
        vocab_size,
        fail_on_call=fail_on_call,
        avoid=eos,
        ignore_masks=ignore_masks,
    )
    kwargs = {} if clock is None else {"clock": clock}
    info = fake_info(vocab_size, eos)
    engine = LLMEngine(cfg, ex, info, num_blocks=num_blocks, grammar_compiler=grammar_compiler, **kwargs)
    return engine, ex


def prompt(n: int, k: int = 0, vocab_size: int = 1000) -> list[int]:
    return [(37 * i + 11 * k + 3) % vocab_size for i in range(n)]


def collect(outputs) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    for o in outputs:
        tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
    return tokens


# ---------------------------------------------------------------- structured output


class FakeGrammar:
    """A compiled grammar over the fake vocabulary: `word` first, token by token; then any number of `tail`
    tokens. end="terminate": complete (terminated, like a closed JSON object) as soon as the word is, when
    there is no tail; end="eos": from the end of the word on EOS is allowed, and ends it.
    `fail_fill_at`: fill_mask raises GrammarBudgetExceeded after that many tokens."""

    def __init__(
        self,
        word: Sequence[int],
        tail: Sequence[int] = (),
        end: str = "terminate",
        vocab_size: int = 1000,
        eos: int = 2,
        param: str = "structured_outputs.grammar",
        fail_fill_at: int | None = None,
    ) -> None:
        assert end in ("terminate", "eos") and (end == "eos" or not tail)
        self.word, self.tail, self.end = tuple(word), frozenset(tail), end
        self.vocab_size, self.eos, self.param, self.fail_fill_at = vocab_size, eos, param, fail_fill_at
        self.matchers: list[FakeMatcher] = []
        self.cache_hit = False  # what LLMEngine reads of a CompiledGrammar
        self.compile_seconds = 0.002

    def matcher(self) -> FakeMatcher:
        m = FakeMatcher(self)
        self.matchers.append(m)
        return m


class FakeMatcher:
    """GrammarMatcher's interface over FakeGrammar; records what the engine did with it."""

    def __init__(self, grammar: FakeGrammar) -> None:
        self.g = grammar
        self.accepted: list[int] = []
        self.eos_accepted = False
        self.fills = 0
        self.replays: list[tuple[int, ...]] = []

    @property
    def mask_words(self) -> int:
        return mask_words(self.g.vocab_size)

    @property
    def accepts_eos(self) -> bool:
        return len(self.accepted) >= len(self.g.word) and not self.eos_accepted

    @property
    def is_terminated(self) -> bool:
        done = len(self.accepted) >= len(self.g.word)
        return self.eos_accepted or (done and self.g.end == "terminate")

    def allowed(self) -> set[int]:
        n = len(self.accepted)
        if self.is_terminated:
            return {self.g.eos}
        if n < len(self.g.word):
            return {self.g.word[n]}
        return set(self.g.tail) | {self.g.eos}

    def fill_mask(self, out: np.ndarray) -> None:
        assert out.dtype == np.int32 and out.shape == (self.mask_words,)
        if self.g.fail_fill_at is not None and len(self.accepted) >= self.g.fail_fill_at:
            raise GrammarBudgetExceeded(
                "the grammar exceeded its budget while generating", param=self.g.param
            )
        self.fills += 1
        allowed = np.zeros(self.g.vocab_size, dtype=bool)
        allowed[sorted(self.allowed())] = True
        out[:] = pack_token_bitmask(allowed)

    def accept(self, token: int) -> bool:
        if token == self.g.eos:
            if not self.accepts_eos:
                return False
            self.eos_accepted = True
        elif token not in self.allowed():
            return False
        self.accepted.append(token)
        return True

    def rollback(self, n: int) -> None:
        """Undo the last n accepted tokens (speculative decoding's draft masks)."""
        assert 0 <= n <= len(self.accepted)
        for _ in range(n):
            if self.accepted.pop() == self.g.eos:
                self.eos_accepted = False

    def replay(self, token_ids: Sequence[int]) -> int:
        self.replays.append(tuple(token_ids))
        for i, t in enumerate(token_ids):
            if not self.accept(t):
                return i
        return len(token_ids)


def grammar_params(**kw) -> SamplingParams:
    """SamplingParams asking for structured output (the spec is a stand-in: tests pass the grammar)."""
    return SamplingParams(structured_outputs=StructuredSpec.regex("x+"), **kw)


class FakeCompiler:
    """GrammarCompiler's `compile`: a future per call that the test resolves (`resolve`, `fail`), or resolved
    at once with `grammar` when `auto` is set."""

    def __init__(self, grammar: FakeGrammar | None = None, auto: bool = False) -> None:
        self.grammar = grammar
        self.auto = auto
        self.pending: list[tuple[StructuredSpec, Future]] = []
        self.compiled = threading.Event()  # set on each call
        self.closed = False

    def compile(self, spec: StructuredSpec) -> Future:
        future: Future = Future()
        if self.auto:
            future.set_result(self.grammar)
        else:
            self.pending.append((spec, future))
        self.compiled.set()
        return future

    def close(self) -> None:
        self.closed = True
