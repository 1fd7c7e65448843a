"""Scheduler: continuous batching over a paged KV cache; FCFS, chunked prefill, preemption by recompute,
prefix caching (a cached prefix counts as computed tokens: only the rest is prefilled, in chunks as usual).

Pure Python: it decides which tokens of which requests run each step and owns the block ids; the executor runs
them. `schedule()` -> SchedulerOutput -> executor -> ModelRunnerOutput -> `update()` -> RequestOutputs.
Requests with structured output carry a grammar matcher; its masks go out with the step (grammar_rows.py).
With speculative decoding on, decoding requests may carry a draft verified in the same step (spec_decode.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from paddlellm.config import EngineConfig
from paddlellm.engine import grammar_rows
from paddlellm.engine.block_manager import BlockManager
from paddlellm.engine.grammar_rows import Grammar
from paddlellm.engine.outputs import RequestOutput
from paddlellm.engine.prefix_cache import PrefixCache, PrefixHit
from paddlellm.engine.request import Request, RequestStatus
from paddlellm.engine.spec_decode import SpecDecode
from paddlellm.errors import ConfigError, EngineError, InvalidRequest, Overloaded
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import (
    BlockCopy,
    CachedRequestData,
    ModelRunnerOutput,
    MultiModalPrompt,
    NewRequestData,
    SchedulerOutput,
)

_MASK64 = (1 << 64) - 1


class Scheduler:
    def __init__(
        self,
        config: EngineConfig,
        num_blocks: int,
        eos_token_ids: Sequence[int] = (),
        vocab_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_seed: bytes = b"",
    ) -> None:
        """`cache_seed`: the prefix cache's key for the model and value-changing options (prefix_cache.py)."""
        if config.batched_tokens < config.max_num_seqs:
            raise ConfigError(
                f"config 'max_num_batched_tokens': {config.batched_tokens} is less than max_num_seqs "
                f"({config.max_num_seqs}): every running request must be able to decode in each step"
            )
        self.config = config
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.prefix_cache = PrefixCache(self.blocks, config.enable_prefix_caching, cache_seed)
        spec = config.speculative
        self.spec_decode = None if spec is None else SpecDecode(spec, config.max_model_len)
        self._eos = frozenset(eos_token_ids)
        self._vocab_size = vocab_size
        self._clock = clock
        self.waiting: deque[Request] = deque()  # FCFS; preempted requests go back to the front
        self.running: list[Request] = []  # oldest admission first: preemption takes from the end
        self.requests: dict[str, Request] = {}  # every unfinished request
        self._finished_ids: set[str] = set()  # runner state to drop at the next step
        self._pending: list[RequestOutput] = []  # outputs made outside update() (TTL expiry)
        self._seed_counter = 0
        self.num_preemptions = 0
        self.last_batch_size = 0
        # Seconds spent filling grammar masks, one entry per step that filled any (drained by the metrics).
        self.mask_seconds: deque[float] = deque(maxlen=4096)

    # ---------------------------------------------------------------- requests in and out

    def validate(self, prompt_ids: Sequence[int], sampling_params: SamplingParams) -> SamplingParams:
        """Length and cache-size checks that need no scheduler state (safe to call from any thread)."""
        n, limit = len(prompt_ids), self.config.max_model_len
        sampling_params = self.resolve(n, sampling_params)
        assert sampling_params.max_tokens is not None  # resolved above
        if n == 0:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if n >= limit:
            raise InvalidRequest(
                f"the prompt has {n} tokens, but max_model_len is {limit}: the prompt must be "
                f"shorter than that to leave room for output",
                param="prompt",
            )
        if n + sampling_params.max_tokens > limit:
            raise InvalidRequest(
                f"the prompt ({n} tokens) plus max_tokens ({sampling_params.max_tokens}) is "
                f"{n + sampling_params.max_tokens} tokens, more than max_model_len ({limit})",
                param="max_tokens",
            )
        total = self.blocks.num_total_blocks
        need = self.blocks.blocks_for(n + sampling_params.max_tokens - 1)
        if need > total:
            param = "prompt" if self.blocks.blocks_for(n) > total else "max_tokens"
            raise InvalidRequest(
                f"the prompt ({n} tokens) plus max_tokens ({sampling_params.max_tokens}) needs {need} KV "
                f"blocks of {self.blocks.block_size} tokens, but the whole KV cache has {total}",
                param=param,
            )
        if self._vocab_size is not None and (min(prompt_ids) < 0 or max(prompt_ids) >= self._vocab_size):
            raise InvalidRequest(f"prompt token ids must be in [0, {self._vocab_size})", param="prompt")
        return sampling_params

    def resolve(self, prompt_len: int, sampling_params: SamplingParams) -> SamplingParams:
        """max_tokens=None means "as many as fit": the context left, capped by what the whole cache holds."""
        cache_tokens = self.blocks.num_total_blocks * self.blocks.block_size
        return sampling_params.with_room(min(self.config.max_model_len, cache_tokens + 1) - prompt_len)

    def validate_resume(self, resume_ids: Sequence[int]) -> None:
        if resume_ids and self._vocab_size is not None and (
            min(resume_ids) < 0 or max(resume_ids) >= self._vocab_size
        ):
            raise InvalidRequest(f"resume ids must be in [0, {self._vocab_size})", param="resume_ids")

    def add(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        sampling_params: SamplingParams,
        resume_ids: Sequence[int] = (),
        grammar: Grammar | None = None,
        mm: MultiModalPrompt | None = None,
    ) -> Request:
        """Queue a request. `resume_ids`: ids a cut run already streamed; the request starts as if it had
        generated them (the state a preempted request is recomputed from), so max_tokens, min_tokens and the
        penalties count them and they are not emitted again. When they already reach max_tokens, it ends at
        the next step with "length" and no new ids.
        `grammar`: the compiled sampling_params.structured_outputs (required when that is set). The request
        gets its own matcher, advanced past `resume_ids` (InvalidRequest if they do not fit the grammar); one
        that is already complete ends at the next step with "stop". `mm`: its images (mm_prompt.py); image
        tokens are ordinary prompt tokens for budgets, chunking and preemption."""
        prompt = tuple(int(t) for t in prompt_ids)
        resume = [int(t) for t in resume_ids]
        sampling_params = self.resolve(len(prompt), sampling_params)
        self.validate(prompt, sampling_params)
        self.validate_resume(resume)
        if request_id in self.requests:
            raise InvalidRequest(f"request id {request_id!r} is already in use", param="request_id")
        max_size = self.config.scheduler_max_size
        if 0 < max_size <= len(self.waiting):
            raise Overloaded(f"the engine queue is full ({max_size} requests waiting; scheduler_max_size)")
        if sampling_params.structured_outputs is not None and grammar is None:
            raise ValueError("a request with structured_outputs needs its compiled grammar")
        matcher = None if grammar is None else grammar_rows.start_matcher(grammar, resume)
        req = Request(
            request_id, prompt, sampling_params, self._resolve_seed(sampling_params), self._clock(), mm
        )
        req.output_token_ids = resume
        req.num_emitted = len(resume)
        req.matcher = matcher
        self.requests[request_id] = req
        self.waiting.append(req)
        assert sampling_params.max_tokens is not None  # resolved above
        if matcher is not None and matcher.is_terminated:
            self._finish(req, "stop")
            self._pending.append(self._output(req))
        elif len(resume) >= sampling_params.max_tokens:
            self._finish(req, "length")
            self._pending.append(self._output(req))
        return req

    def abort(self, request_id: str) -> RequestOutput | None:
        """Finish a request now ("abort"), freeing its blocks; None if it is unknown or already finished."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        self._finish(req, "abort")
        return self._output(req)

    def has_unfinished(self) -> bool:
        return bool(self.requests) or bool(self._pending)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # ---------------------------------------------------------------- one step

    def schedule(self) -> SchedulerOutput:
        """Pick this step's tokens.

        1. Waiting requests that never started within scheduler_ttl end with an Overloaded error.
        2. Running requests, oldest first, within the step's token budget: a decoding request gets
           1 token, a prefilling one its next chunk. Each needs blocks for num_computed + scheduled
           tokens; while none are free, the newest running request is preempted (blocks freed, back
           to the front of the queue, later recomputed from prompt + outputs), possibly the
           requesting one itself. With speculative decoding (and at most disable_by_batch_size
           running), a decoding request may add a draft of up to k tokens, within the budget left
           after one token for each later running request, and only on blocks already free.
        3. Unless something was preempted, admit waiting requests FCFS while fewer than max_num_seqs
           run, budget remains, and blocks in use after admitting stay <= kv_cache_ratio x total
           (with nothing running, the head goes in if its first chunk fits at all: no starvation).
           An admitted request first takes the longest cached prefix of its tokens (whole blocks, then
           maybe a partial hit whose rows are copied into its next block; at least one token left):
           those tokens count as computed and its first chunk starts after them. Cached blocks nobody
           held count as newly used, like fresh ones. A request that asked
           for prompt_logprobs reads no cached prefix until it has them all: every prompt position
           must run through the model (its blocks are still registered for others).
        4. Each scheduled request with a grammar whose chunk reaches its end (it samples this step) fills
           its mask (grammar_masks; requests without a grammar cost nothing). One whose grammar ran out of
           budget ends here with that error and does not run.
        5. Admitted requests go out whole (NewRequestData), the rest as changes only
           (CachedRequestData).
        """
        now = self._clock()
        self._expire_waiting(now)
        budget = self.config.batched_tokens
        scheduled: dict[str, int] = {}
        drafts: dict[str, tuple[int, ...]] = {}
        preemptions_before = self.num_preemptions
        spec = self.spec_decode if self.spec_decode and self.spec_decode.active(len(self.running)) else None

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self._grow_or_preempt(req, req.num_computed_tokens + n):
                break  # it was the newest, so nothing runs after it
            if spec is not None and req.num_computed_tokens + 1 == req.num_tokens:
                later = len(self.running) - i - 1  # each may need a token of budget and a new block
                draft = spec.draft(req, budget - 1 - later)
                need = self.blocks.num_new_blocks(req.block_ids, req.num_tokens + len(draft))
                if draft and self.blocks.num_free_blocks - need >= later:
                    self.blocks.append(req.block_ids, req.num_tokens + len(draft))
                    drafts[req.request_id] = draft
                    n += len(draft)
            scheduled[req.request_id] = n
            budget -= n
            i += 1

        admitted: set[str] = set()
        copies: list[BlockCopy] = []
        pinned: list[int] = []  # partial hits' sources: held while this pass allocates
        if self.num_preemptions == preemptions_before:
            limit = self.config.kv_cache_ratio * self.blocks.num_total_blocks
            while self.waiting and len(self.running) < self.config.max_num_seqs and budget > 0:
                req = self.waiting[0]
                reads_cache = req.sampling_params.prompt_logprobs is None or req.prompt_logprobs_ready()
                hit = self.prefix_cache.match(req) if reads_cache else PrefixHit([])
                cached = hit.num_tokens(self.blocks.block_size)
                n = min(req.num_tokens - cached, budget)
                # the partial source is held until the pass ends: one more block in use if nobody held it
                sources = hit.blocks if hit.partial is None else [*hit.blocks, hit.partial]
                reclaimed = self.blocks.num_reclaimed(sources)
                need = self.blocks.num_new_blocks(hit.blocks, cached + n) + reclaimed
                if self.running and self.blocks.num_used_blocks + need > limit:
                    break
                if need > self.blocks.num_free_blocks:
                    break
                self.blocks.take(req.block_ids, hit.blocks)
                if hit.partial is not None:
                    self.blocks.pin(hit.partial)
                    pinned.append(hit.partial)
                self.blocks.append(req.block_ids, cached + n)
                if hit.partial is not None:
                    copies.append(BlockCopy(hit.partial, req.block_ids[len(hit.blocks)], hit.rows))
                req.num_computed_tokens = cached
                self.prefix_cache.admitted(req, cached, looked_up=reads_cache)
                self.waiting.popleft()
                req.status = RequestStatus.RUNNING
                if req.first_scheduled_time is None:
                    req.first_scheduled_time = now
                self.running.append(req)
                admitted.add(req.request_id)
                scheduled[req.request_id] = n
                budget -= n

        for b in pinned:  # copied before the step writes anything: later passes may hand them out
            self.blocks.unpin(b)
        masks = self._fill_masks(scheduled, drafts)
        self.last_batch_size = len(scheduled)
        return self._make_output(scheduled, admitted, masks, drafts, tuple(copies))

    def update(self, sched: SchedulerOutput, runner_out: ModelRunnerOutput) -> list[RequestOutput]:
        """Apply one executed step.

        For each scheduled request: advance num_computed_tokens by its chunk; if the chunk reached
        the end of its known tokens, the runner sampled one token: append it and apply the stop
        rules in order (EOS unless ignore_eos, and stop_token_ids, both only once more than
        min_tokens outputs exist -> "stop"; max_tokens or max_model_len -> "length"). A request with a
        grammar advances its matcher instead and follows grammar_rows.stop_reason (a terminated grammar
        -> "stop", whatever min_tokens and ignore_eos say; a token the grammar refuses -> "error"). Blocks the
        chunk filled are registered in the prefix cache (before a finish frees them: they stay
        cached). Finished requests free their blocks. Returns one RequestOutput per request that
        gained a token or finished, after any made since the last update (TTL expiries).

        Logprobs: the runner's entry for each sampled token of a request that asked is appended to
        Request.output_logprobs (aligned with the outputs generated here); prompt logprobs are stored per
        prompt position (a recompute after preemption writes the same slots again, so nothing is
        duplicated) and go out once, on the first output after the whole prompt was computed.
        """
        outputs, self._pending = self._pending, []
        for request_id, n in sched.num_scheduled_tokens.items():
            req = self.requests.get(request_id)
            if req is None or req.status is not RequestStatus.RUNNING:
                continue
            draft = sched.draft_token_ids.get(request_id)
            if draft is not None:
                outputs.append(self._accept_run(req, draft, runner_out))
                continue
            req.num_computed_tokens += n
            self.prefix_cache.register_computed(req)
            prompt_part = runner_out.prompt_logprobs.get(request_id)
            if prompt_part is not None and req.prompt_logprobs is not None and not req.prompt_logprobs_sent:
                first, entries = prompt_part
                req.prompt_logprobs[first : first + len(entries)] = entries
            if req.num_computed_tokens < req.num_tokens:
                continue  # a prefill chunk short of the end: nothing sampled
            token = runner_out.sampled_token_ids.get(request_id)
            if token is None:
                raise RuntimeError(
                    f"executor sampled no token for request {request_id!r} at the end of its chunk"
                )
            req.output_token_ids.append(int(token))
            if req.sampling_params.logprobs is not None:
                entry = runner_out.logprobs.get(request_id)
                if entry is None:
                    raise RuntimeError(f"executor returned no logprobs for request {request_id!r}")
                req.output_logprobs.append(entry)
            if req.first_token_time is None:
                req.first_token_time = self._clock()
            try:
                reason = self._stop_reason(req, int(token))
            except EngineError as e:  # the grammar refused the token or ran out of budget: this request only
                self._finish(req, "error", e)
            else:
                if reason is not None:
                    self._finish(req, reason)
            outputs.append(self._output(req))
        return outputs

    def _accept_run(
        self, req: Request, draft: tuple[int, ...], runner_out: ModelRunnerOutput
    ) -> RequestOutput:
        """A verified draft: append the runner's accepted run token by token under the stop rules (tokens
        after a stop are dropped), so the KV of the last known token and the accepted draft tokens is computed
        (num_computed = num_tokens - 1, as after a plain decode) and only those blocks are registered; then
        release the blocks that held only rejected draft tokens."""
        rid = req.request_id
        run = runner_out.accepted_token_ids.get(rid)
        if not run or len(run) > len(draft) + 1:
            raise RuntimeError(f"executor returned no valid accepted run for drafted request {rid!r}")
        lps = runner_out.accepted_logprobs.get(rid) if req.sampling_params.logprobs is not None else None
        if req.sampling_params.logprobs is not None and (lps is None or len(lps) != len(run)):
            raise RuntimeError(f"executor returned no logprobs for request {rid!r}")
        assert self.spec_decode is not None  # a draft was scheduled
        self.spec_decode.record(req, len(draft), len(run) - 1)
        reason, error = None, None
        for j, token in enumerate(run):
            req.output_token_ids.append(int(token))
            if lps is not None:
                req.output_logprobs.append(lps[j])
            try:
                reason = self._stop_reason(req, int(token))
            except EngineError as e:  # the grammar refused the token or ran out of budget
                reason, error = "error", e
            if reason is not None:
                break
        if req.first_token_time is None:
            req.first_token_time = self._clock()
        req.num_computed_tokens = req.num_tokens - 1
        self.prefix_cache.register_computed(req)
        if reason is not None:
            self._finish(req, reason, error)
        else:
            keep = self.blocks.blocks_for(req.num_tokens)
            if len(req.block_ids) > keep:
                self.blocks.truncate(req.block_ids, keep)
                if req.num_synced_blocks > keep:
                    req.num_synced_blocks, req.blocks_cut = keep, True
        return self._output(req)

    # ---------------------------------------------------------------- helpers

    def _grow_or_preempt(self, req: Request, num_tokens: int) -> bool:
        """Blocks for `num_tokens` of `req`, preempting the newest running requests as needed; False if `req`
        itself had to go."""
        while self.blocks.append(req.block_ids, num_tokens) is None:
            victim = self.running[-1]
            self._preempt(victim)
            if victim is req:
                return False
        return True

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.blocks.free(req.block_ids)
        req.status = RequestStatus.WAITING
        req.num_computed_tokens = req.num_registered_blocks = 0
        req.num_synced_outputs = req.num_synced_blocks = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)
        self._finished_ids.add(req.request_id)

    def _fill_masks(
        self, scheduled: dict[str, int], drafts: dict[str, tuple[int, ...]]
    ) -> dict[str, np.ndarray]:
        """Masks of the scheduled requests with a grammar that sample this step (their chunk reaches the end
        of their known tokens); a request whose grammar fails here is finished with the error and dropped
        from `scheduled`. A drafted request gets one row per sampled position, its draft cut where the
        grammar refuses a token (its blocks are trimmed after the step). The time taken is recorded once per
        step that filled any."""
        masks: dict[str, np.ndarray] = {}
        start = None
        for request_id, n in list(scheduled.items()):
            req = self.requests[request_id]
            if req.matcher is None or req.num_computed_tokens + n < req.num_tokens:
                continue
            if start is None:
                start = time.perf_counter()
            try:
                draft = drafts.get(request_id)
                if draft:
                    rows, kept = grammar_rows.fill_draft_masks(req.matcher, draft)
                    scheduled[request_id] -= len(draft) - kept
                    if kept:
                        masks[request_id], drafts[request_id] = rows, draft[:kept]
                    else:  # nothing of it is allowed: a plain decode (its spare blocks are kept)
                        masks[request_id] = rows[0]
                        del drafts[request_id]
                else:
                    masks[request_id] = grammar_rows.fill_mask(req.matcher)
            except InvalidRequest as e:  # GrammarBudgetExceeded, naming the request's field
                drafts.pop(request_id, None)
                del scheduled[request_id]
                self._finish(req, "error", e)
                self._pending.append(self._output(req))
        if start is not None:
            self.mask_seconds.append(time.perf_counter() - start)
        return masks

    def _make_output(
        self,
        scheduled: dict[str, int],
        admitted: set[str],
        masks: dict[str, np.ndarray],
        drafts: dict[str, tuple[int, ...]],
        copies: tuple[BlockCopy, ...] = (),
    ) -> SchedulerOutput:
        new: list[NewRequestData] = []
        cached: list[CachedRequestData] = []
        batch: dict[str, int] = {}
        for req in self.running:
            n = scheduled.get(req.request_id)
            if n is None:
                continue
            batch[req.request_id] = n
            if req.request_id in admitted:
                new.append(
                    NewRequestData(
                        req.request_id,
                        req.prompt_token_ids,
                        tuple(req.output_token_ids),
                        req.sampling_params,
                        req.seed,
                        tuple(req.block_ids),
                        req.num_computed_tokens,
                        req.mm,
                    )
                )
            else:
                cached.append(
                    CachedRequestData(
                        req.request_id,
                        tuple(req.output_token_ids[req.num_synced_outputs :]),
                        tuple(req.block_ids[req.num_synced_blocks :]),
                        req.num_computed_tokens,
                        req.num_synced_blocks if req.blocks_cut else -1,
                    )
                )
            req.num_synced_outputs = len(req.output_token_ids)
            req.num_synced_blocks = len(req.block_ids)
            req.blocks_cut = False
        if not batch:
            # Nothing runs, so the executor is not called: keep the ids for the next step that runs.
            return SchedulerOutput((), (), {}, frozenset())
        # An id that finished and came back (preempted, or reused) is re-sent whole: no stale drop needed.
        finished = frozenset(self._finished_ids - admitted)
        self._finished_ids.clear()
        return SchedulerOutput(tuple(new), tuple(cached), batch, finished, masks, drafts, copies)

    def _expire_waiting(self, now: float) -> None:
        ttl = self.config.scheduler_ttl
        # Preempted requests (already started) sit at the front; the rest are in arrival order.
        expired = []
        for req in self.waiting:
            if req.first_scheduled_time is not None:
                continue
            if now - req.arrival_time <= ttl:
                break
            expired.append(req)
        for req in expired:
            err = Overloaded(
                f"request {req.request_id!r} waited {now - req.arrival_time:.1f} s without starting, "
                f"longer than scheduler_ttl ({ttl:g} s)"
            )
            self._finish(req, "error", err)
            self._pending.append(self._output(req))

    def _stop_reason(self, req: Request, token: int) -> str | None:
        if req.matcher is not None:
            return grammar_rows.stop_reason(req, token, self.config.max_model_len)
        p = req.sampling_params
        if req.num_output_tokens > p.min_tokens and (
            (token in self._eos and not p.ignore_eos) or token in p.stop_token_ids
        ):
            return "stop"
        if req.num_output_tokens >= p.max_tokens or req.num_tokens >= self.config.max_model_len:
            return "length"
        return None

    def _finish(self, req: Request, reason: str, error: Exception | None = None) -> None:
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
            self._finished_ids.add(req.request_id)
        elif req.status is RequestStatus.WAITING:
            self.waiting.remove(req)
        self.blocks.free(req.block_ids)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        req.error = error
        req.finished_time = self._clock()
        del self.requests[req.request_id]

    def _output(self, req: Request) -> RequestOutput:
        new = tuple(req.output_token_ids[req.num_emitted :])
        logprobs = None
        if req.sampling_params.logprobs is not None:
            resumed = req.num_output_tokens - len(req.output_logprobs)  # resume ids carry no entries
            logprobs = tuple(req.output_logprobs[req.num_emitted - resumed :])
        prompt_logprobs = None
        if not req.prompt_logprobs_sent and req.prompt_logprobs_ready():
            assert req.prompt_logprobs is not None  # ready implies asked
            prompt_logprobs = tuple(req.prompt_logprobs)
            req.prompt_logprobs_sent = True
        req.num_emitted = req.num_output_tokens
        return RequestOutput(
            req.request_id,
            new,
            req.num_prompt_tokens,
            req.num_output_tokens,
            num_cached_tokens=req.num_cached_tokens,
            finished=req.is_finished,
            finish_reason=req.finish_reason,
            error=req.error,
            timings=req.timings(),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )

    def _resolve_seed(self, sampling_params: SamplingParams) -> int:
        """sampling_params.seed, else a well-mixed non-negative 63-bit seed from (config.seed, a per-engine
        counter)."""
        if sampling_params.seed is not None:
            return sampling_params.seed
        ss = np.random.SeedSequence([self.config.seed & _MASK64, self._seed_counter])
        self._seed_counter += 1
        return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1
