"""A minimal stand-in scheduler that drives ModelRunner directly, for runner-level parity tests.

It exercises what the real scheduler sends: new requests once (full state), then only changes; chunked
prefill under a token budget; mixed steps (prefill chunks and decodes together); staggered arrivals; and
finished ids. Blocks come from a simple free list, so reuse of freed blocks is exercised too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paddlellm.sampling import SamplingParams
from paddlellm.step_types import CachedRequestData, NewRequestData, SchedulerOutput, TokenLogprobs
from paddlellm.worker.model_runner import ModelRunner


@dataclass
class _Req:
    rid: str
    prompt: list[int]
    sampling_params: SamplingParams
    seed: int
    arrive_step: int
    outputs: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    computed: int = 0
    sent: bool = False
    pending_tokens: list[int] = field(default_factory=list)
    pending_blocks: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.outputs


def run_requests(
    runner: ModelRunner,
    prompts: list[list[int]],
    params: list[SamplingParams] | SamplingParams,
    token_budget: int = 10_000,
    arrive_every: int = 0,
    seeds: list[int] | None = None,
    max_running: int = 64,
    logprobs: list[list[TokenLogprobs]] | None = None,
    prompt_logprobs: list[dict[int, TokenLogprobs]] | None = None,
) -> list[list[int]]:
    """Generate params.max_tokens tokens per prompt (no EOS stop) and return the output ids per prompt.
    `logprobs` / `prompt_logprobs` (lists with one slot per prompt), if given, collect the runner's entries:
    per output token, and per prompt position (each position must come once)."""
    plist = params if isinstance(params, list) else [params] * len(prompts)
    reqs = [
        _Req(f"r{i}", list(p), plist[i], (seeds or list(range(len(prompts))))[i], i * arrive_every)
        for i, p in enumerate(prompts)
    ]
    bs = runner.block_size
    free = list(range(runner.cache.num_blocks))[::-1]
    step = 0
    finished: set[str] = set()
    done_ids: list[str] = []
    while len(finished) < len(reqs):
        live = [r for r in reqs if r.arrive_step <= step and r.rid not in finished][:max_running]
        budget = token_budget
        sched: dict[str, int] = {}
        new, cached = [], []
        for r in live:
            known = len(r.tokens)
            n = min(known - r.computed, budget)
            if n <= 0:
                continue
            need = -(-(r.computed + n) // bs) - len(r.blocks)
            for _ in range(need):
                b = free.pop()
                r.blocks.append(b)
                r.pending_blocks.append(b)
            budget -= n
            sched[r.rid] = n
            if not r.sent:
                new.append(
                    NewRequestData(
                        r.rid,
                        tuple(r.prompt),
                        tuple(r.outputs),
                        r.sampling_params,
                        r.seed,
                        tuple(r.blocks),
                        r.computed,
                    )
                )
                r.sent = True
            else:
                cached.append(
                    CachedRequestData(r.rid, tuple(r.pending_tokens), tuple(r.pending_blocks), r.computed)
                )
            r.pending_tokens, r.pending_blocks = [], []
        out = runner.execute(SchedulerOutput(tuple(new), tuple(cached), sched, frozenset(done_ids)))
        done_ids = []
        for rid, (first, entries) in out.prompt_logprobs.items():
            if prompt_logprobs is not None:
                slot = prompt_logprobs[int(rid[1:])]
                for k, e in enumerate(entries):
                    assert first + k not in slot, f"prompt position {first + k} of {rid} came twice"
                    slot[first + k] = e
        for rid, e in out.logprobs.items():
            if logprobs is not None:
                logprobs[int(rid[1:])].append(e)
        for rid, n in sched.items():
            r = next(x for x in reqs if x.rid == rid)
            r.computed += n
            if rid in out.sampled_token_ids:
                tok = out.sampled_token_ids[rid]
                r.outputs.append(tok)
                r.pending_tokens.append(tok)
                if len(r.outputs) >= r.sampling_params.max_tokens:
                    finished.add(rid)
                    done_ids.append(rid)
                    free.extend(r.blocks)
        step += 1
    runner.execute(SchedulerOutput((), (), {}, frozenset(done_ids)))
    assert not runner.requests, "runner kept state for finished requests"
    return [r.outputs for r in reqs]
