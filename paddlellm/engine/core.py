"""LLMEngine: owns the scheduler and an executor; one `step()` = schedule -> execute -> update.

Single-threaded by design: callers that need threads use `EngineLoop`, which owns the engine on one thread.
The exception is structured output's compiler (`compile_grammar`, safe from any thread): it is created on
first use from the checkpoint's tokenizer and compiles in its own small pool, so a new grammar never stalls
a step; `add_request` takes the compiled grammar (or compiles synchronously when given none: offline use).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from paddlellm.config import EngineConfig
from paddlellm.engine.kv_budget import expected_kv_value_bytes, num_kv_blocks
from paddlellm.engine.mm_prompt import build_mm_prompt
from paddlellm.engine.outputs import RequestOutput
from paddlellm.engine.prefix_cache import cache_seed
from paddlellm.engine.scheduler import Scheduler
from paddlellm.errors import CheckpointError, InvalidRequest
from paddlellm.executor.base import Executor
from paddlellm.model_info import ModelInfo, resolve_checkpoint
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import ModelRunnerOutput, MultiModalPrompt
from paddlellm.vision.image_inputs import ImageInputs
from paddlellm.vision.vl_config import VLConfig

if TYPE_CHECKING:  # imported lazily: the engine core does not load the grammar library until it is used
    from paddlellm.structured.compiler import CompiledGrammar, GrammarCompiler
    from paddlellm.structured.spec import StructuredSpec

_NOTHING_RUN = ModelRunnerOutput(sampled_token_ids={})


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    num_preemptions: int  # since start (warmup excluded)
    last_batch_size: int  # requests in the last scheduled step
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache since start (warmup excluded)
    prefix_cache_hits: int = 0  # of those, tokens found cached
    # Speculative decoding since start (warmup excluded): drafts verified, their tokens, the accepted ones,
    # and accepted tokens per draft position (empty when speculative decoding is off).
    spec_num_drafts: int = 0
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0
    spec_accepted_per_position: tuple[int, ...] = ()
    spec_drafted_per_position: tuple[int, ...] = ()  # drafts long enough to have a token at position j


@dataclass(frozen=True)
class GrammarTimings:
    """Structured output's costs since the last `take_grammar_timings` (for the metrics' histograms)."""

    compile_seconds: tuple[float, ...]  # one per grammar actually compiled (cache hits not included)
    mask_seconds: tuple[float, ...]  # one per step that filled any grammar mask: all its rows together


class LLMEngine:
    def __init__(
        self,
        config: EngineConfig,
        executor: Executor,
        info: ModelInfo,
        num_blocks: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        grammar_compiler: GrammarCompiler | None = None,
    ) -> None:
        """`num_blocks` must match the cache the executor allocated; None sizes it from the CPU budget.
        `grammar_compiler`: default one built from the checkpoint's tokenizer on first use."""
        self.config = config
        self.executor = executor
        self.info = info
        self._compiler = grammar_compiler
        self._compiler_lock = threading.Lock()
        self._compile_seconds: deque[float] = deque(maxlen=4096)  # appended by the compile pool's threads
        # Images: (image token id, merge size) when this engine serves them (enable_mm and a vision tower).
        self._image_facts: tuple[int, int] | None = None
        if config.enable_mm and info.vision is not None:
            vl = VLConfig.from_dir(info.path)
            self._image_facts = (vl.image_token_id, vl.vision.spatial_merge_size)
        blocks = (
            num_blocks
            if num_blocks is not None
            else num_kv_blocks(config, info, dtype_bytes=expected_kv_value_bytes(config, info))
        )
        self.scheduler = Scheduler(
            config, blocks, info.eos_token_ids, info.vocab_size, clock, cache_seed(config, info)
        )

    @classmethod
    def create(cls, config: EngineConfig) -> LLMEngine:
        """Resolve the checkpoint, size the KV cache, build the executor, and warm up if configured."""
        path = resolve_checkpoint(config.model)
        info = ModelInfo.from_dir(path, config.max_model_len)
        if config.tensor_parallel_size == 1:
            from paddlellm.executor.inproc import InprocExecutor as executor_cls  # lazy: imports paddle
        else:
            from paddlellm.executor.multiproc import MultiprocExecutor as executor_cls  # type: ignore[no-redef]
        # On GPU the executor measures the memory the cache may take (after weights); on CPU: config.
        device_memory = executor_cls.kv_memory_bytes(config, info) if config.device == "gpu" else None
        num_blocks = num_kv_blocks(config, info, device_memory, expected_kv_value_bytes(config, info))
        engine = cls(config, executor_cls(config, info, num_blocks), info, num_blocks)
        if config.use_warmup:
            engine.warmup()
        return engine

    # ---------------------------------------------------------------- requests

    def validate(
        self, prompt_ids: Sequence[int], params: SamplingParams, resume_ids: Sequence[int] = ()
    ) -> SamplingParams:
        """The add-time checks that need no engine state; safe from any thread. Returns the params as the
        request will run them (max_tokens resolved)."""
        self.scheduler.validate_resume(resume_ids)
        return self.scheduler.validate(prompt_ids, params)

    def prepare_images(
        self, prompt_ids: Sequence[int], images: ImageInputs | None
    ) -> MultiModalPrompt | None:
        """A request's images checked against its placeholders, with offsets and M-RoPE positions (None for
        none); InvalidRequest naming `messages` when this engine does not serve images or they do not fit the
        prompt. Pure: safe from any thread."""
        if images is None or not images:
            return None
        if self._image_facts is None:
            why = "the engine was started without enable_mm" if self.info.vision else "a text-only model"
            raise InvalidRequest(f"this server does not accept images ({why})", param="messages")
        image_token_id, merge = self._image_facts
        return build_mm_prompt(prompt_ids, images, image_token_id, merge)

    def add_request(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        resume_ids: Sequence[int] = (),
        grammar: CompiledGrammar | None = None,
        images: MultiModalPrompt | ImageInputs | None = None,
    ) -> None:
        """Queue a request; raises InvalidRequest (length, duplicate id, a grammar that does not compile) or
        Overloaded (queue full). `resume_ids`: continue a cut run as if these ids had already been generated
        (Scheduler.add). `grammar`: params.structured_outputs compiled (`compile_grammar`); when it is set and
        no grammar is given, it is compiled here, blocking the caller (offline use; EngineLoop compiles
        before it queues). `images`: the prompt's images, as `prepare_images` returns them (or as the
        tokenizer sends them: prepared here)."""
        params = params or SamplingParams()
        if isinstance(images, ImageInputs):
            images = self.prepare_images(prompt_ids, images)
        if params.structured_outputs is not None and grammar is None:
            grammar = self.compile_grammar(params.structured_outputs).result()
        self.scheduler.add(request_id, prompt_ids, params, resume_ids, grammar, images)

    def grammar_compiler(self) -> GrammarCompiler:
        """The structured-output compiler, built once on first use (reading the tokenizer takes ~0.3 s) with
        the model's logit rows and stop ids; thread-safe."""
        with self._compiler_lock:
            if self._compiler is None:
                from paddlellm.structured.compiler import GrammarCompiler
                from paddlellm.structured.tokenizer_info import TokenizerInfo

                info = TokenizerInfo.from_dir(self.info.path, self.info.vocab_size, self.info.eos_token_ids)
                self._compiler = GrammarCompiler(info)
            return self._compiler

    def compile_grammar(self, spec: StructuredSpec) -> Future[CompiledGrammar]:
        """Start compiling `spec` off the caller's thread (cached by its canonical key); the future's error
        is an InvalidRequest naming spec.param. Safe from any thread."""
        try:
            compiler = self.grammar_compiler()
        except CheckpointError as e:  # e.g. no tokenizer.json: say so on the request, as a 400
            failed: Future[CompiledGrammar] = Future()
            failed.set_exception(
                InvalidRequest(f"structured output is unavailable for this model: {e}", param=spec.param)
            )
            return failed
        future = compiler.compile(spec)
        future.add_done_callback(self._observe_compile)
        return future

    def _observe_compile(self, future: Future[CompiledGrammar]) -> None:
        if future.exception() is None and not future.result().cache_hit:
            self._compile_seconds.append(future.result().compile_seconds)

    def take_grammar_timings(self) -> GrammarTimings:
        """The compile and mask-fill times recorded since the last call (the metrics drain them)."""
        return GrammarTimings(_drain(self._compile_seconds), _drain(self.scheduler.mask_seconds))

    def abort(self, request_id: str) -> RequestOutput | None:
        """Finish a request with "abort" and free its blocks; its final output, or None if unknown."""
        return self.scheduler.abort(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---------------------------------------------------------------- stepping

    def step(self) -> list[RequestOutput]:
        """One step of continuous batching over every live request."""
        sched = self.scheduler.schedule()
        runner_out = _NOTHING_RUN if sched.is_empty else self.executor.execute(sched)
        return self.scheduler.update(sched, runner_out)

    def run_until_done(self) -> list[RequestOutput]:
        """Step until no request is left; every output in order (offline use and tests)."""
        outputs: list[RequestOutput] = []
        while self.has_unfinished():
            outputs.extend(self.step())
        return outputs

    def warmup(self) -> None:
        """Run dummy batches (a long prefill, then a full decode batch, greedy and sampled) so the first real
        request pays no first-call costs; then forget them."""
        if self.has_unfinished():
            raise RuntimeError("warmup needs an idle engine")
        cfg, vocab = self.config, self.info.vocab_size
        capacity = self.scheduler.blocks.num_total_blocks * cfg.block_size

        def ids(n: int, k: int) -> list[int]:
            return [(31 * i + 7 * k + 1) % vocab for i in range(n)]

        # Long enough to warm the prefill kernels, short enough not to stall start-up (attention is O(n^2)).
        long_len = min(cfg.batched_tokens, 512, cfg.max_model_len - 2, capacity - 1)
        if long_len >= 1:
            self.add_request(
                "__warmup_prefill",
                ids(long_len, 0),
                SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True, seed=0),
            )
            self.run_until_done()
        prompt_len = max(1, min(8, cfg.max_model_len - 4))
        max_tokens = max(1, min(4, cfg.max_model_len - prompt_len))
        for k in range(cfg.max_num_seqs):
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=0.0 if k % 2 == 0 else 0.8,
                top_p=0.9,
                ignore_eos=True,
                seed=k,
            )
            try:
                self.add_request(f"__warmup_decode_{k}", ids(prompt_len, k + 1), params)
            except InvalidRequest:  # a cache too small for even this: nothing to warm
                break
        self.run_until_done()
        self.scheduler.num_preemptions = 0
        self.scheduler.last_batch_size = 0
        self.scheduler.prefix_cache.reset_counts()
        spec = self.scheduler.spec_decode
        if spec is not None:
            spec.reset_counts()

    # ---------------------------------------------------------------- health and stats

    def check_health(self) -> None:
        """Raise EngineDead if the executor lost a worker."""
        self.executor.check_health()

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            num_free_blocks=s.blocks.num_free_blocks,
            num_total_blocks=s.blocks.num_total_blocks,
            num_preemptions=s.num_preemptions,
            last_batch_size=s.last_batch_size,
            prefix_cache_queries=s.prefix_cache.queries,
            prefix_cache_hits=s.prefix_cache.hits,
            **_spec_stats(s),
        )

    def shutdown(self) -> None:
        self.executor.shutdown()
        with self._compiler_lock:
            compiler, self._compiler = self._compiler, None
        if compiler is not None:
            compiler.close()


def _spec_stats(s: Scheduler) -> dict[str, Any]:
    spec = s.spec_decode
    if spec is None:
        return {}
    return {
        "spec_num_drafts": spec.num_drafts,
        "spec_num_draft_tokens": spec.num_draft_tokens,
        "spec_num_accepted_tokens": spec.num_accepted_tokens,
        "spec_accepted_per_position": tuple(spec.accepted_per_position),
        "spec_drafted_per_position": tuple(spec.drafted_per_position),
    }


def _drain(values: deque[float]) -> tuple[float, ...]:
    """Pop everything in `values` (another thread may append meanwhile: deque ops are atomic)."""
    out = []
    while True:
        try:
            out.append(values.popleft())
        except IndexError:
            return tuple(out)
