"""LLM: offline batch generation on one engine, e.g. for scripts, benchmarks and parity tests.

llm = LLM("/path/to/checkpoint", max_num_seqs=16)
for c in llm.generate(["Hello"], SamplingParams(max_tokens=32)):
    print(c.text, c.finish_reason)

Structured output (`SamplingParams(structured_outputs=StructuredSpec.json_schema(...))`): every distinct
grammar of a batch is compiled before anything is queued, so a bad schema raises InvalidRequest (naming the
field) and runs nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.errors import InvalidRequest, Overloaded
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import TokenLogprobs
from paddlellm.text.tokenizer import TextTokenizer
from paddlellm.vision.image_inputs import ImageInputs


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]: ...


@dataclass(frozen=True)
class OfflineCompletion:
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None  # "stop" | "length" | "error"
    # sampling_params.logprobs set: one entry per id of token_ids; else None.
    logprobs: tuple[TokenLogprobs, ...] | None = None
    # sampling_params.prompt_logprobs set: one per prompt token, the first None; else None.
    prompt_logprobs: tuple[TokenLogprobs | None, ...] | None = None


class LLM:
    def __init__(self, model: str, **engine_config_overrides: Any) -> None:
        """Build an engine for `model` (a checkpoint dir or .gguf file) with EngineConfig overrides."""
        engine = LLMEngine.create(EngineConfig(model=model, **engine_config_overrides))
        self._init(engine, TextTokenizer.from_dir(engine.info.path, engine.info.text))

    @classmethod
    def from_engine(cls, engine: LLMEngine, tokenizer: Tokenizer) -> LLM:
        """Wrap an existing engine (tests, or an engine built with a custom executor)."""
        llm = cls.__new__(cls)
        llm._init(engine, tokenizer)
        return llm

    def _init(self, engine: LLMEngine, tokenizer: Tokenizer) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self._next_id = 0

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        images: Sequence[ImageInputs | None] | None = None,
    ) -> list[OfflineCompletion]:
        """Complete each prompt (text, or token ids as is); results in prompt order. `images`: per prompt,
        its images (the prompt holds their expanded placeholders, as the tokenizer model builds them), or
        None; needs an engine started with enable_mm on a vision-language checkpoint."""
        ids = [self.tokenizer.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        if images is not None and len(images) != len(ids):
            raise InvalidRequest(f"got {len(images)} image lists for {len(ids)} prompts", param="images")
        return self._run(ids, params, images)

    def chat(
        self,
        messages_list: Sequence[list[dict[str, Any]]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[OfflineCompletion]:
        """Answer each conversation through the model's chat template."""
        return self._run([self.tokenizer.encode_chat(list(m)) for m in messages_list], params)

    def shutdown(self) -> None:
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _run(
        self,
        prompts: list[list[int]],
        params: SamplingParams | Sequence[SamplingParams] | None,
        images: Sequence[ImageInputs | None] | None = None,
    ) -> list[OfflineCompletion]:
        """Validate everything first (nothing is queued for a bad batch), then keep the engine's queue fed
        (in prompt order) and step until every request finished."""
        if params is None or isinstance(params, SamplingParams):
            plist = [params or SamplingParams()] * len(prompts)
        else:
            plist = list(params)
            if len(plist) != len(prompts):
                raise InvalidRequest(
                    f"got {len(plist)} sampling params for {len(prompts)} prompts", param="params"
                )
        for ids, p in zip(prompts, plist, strict=True):
            self.engine.validate(ids, p)
        per_prompt = images if images is not None else [None] * len(prompts)
        mms = [self.engine.prepare_images(ids, im) for ids, im in zip(prompts, per_prompt, strict=True)]
        compiled: dict[int, Any] = {}  # id(params) -> its CompiledGrammar (the compiler caches by key too)
        for p in plist:
            if p.structured_outputs is not None and id(p) not in compiled:
                compiled[id(p)] = self.engine.compile_grammar(p.structured_outputs).result()
        rids = [f"llm-{self._next_id + i}" for i in range(len(prompts))]
        self._next_id += len(prompts)
        index = {rid: i for i, rid in enumerate(rids)}
        tokens: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[TokenLogprobs] | None] = [
            None if p.logprobs is None else [] for p in plist
        ]
        prompt_logprobs: list[tuple[TokenLogprobs | None, ...] | None] = [None] * len(prompts)
        reasons: list[str | None] = [None] * len(prompts)
        todo = deque(range(len(prompts)))
        # Keep about one batch waiting: a huge offline batch must not age past scheduler_ttl in the queue.
        refill = self.engine.config.max_num_seqs
        while todo or self.engine.has_unfinished():
            while todo and self.engine.scheduler.num_waiting < refill:
                try:
                    p = plist[todo[0]]
                    self.engine.add_request(
                        rids[todo[0]], prompts[todo[0]], p, grammar=compiled.get(id(p)), images=mms[todo[0]]
                    )
                except Overloaded:
                    break  # scheduler_max_size: add the rest as the queue drains
                todo.popleft()
            for out in self.engine.step():
                i = index[out.request_id]
                tokens[i].extend(out.new_token_ids)
                entries = logprobs[i]
                if entries is not None and out.logprobs is not None:
                    entries.extend(out.logprobs)
                if out.prompt_logprobs is not None:
                    prompt_logprobs[i] = out.prompt_logprobs
                if out.finished:
                    reasons[i] = out.finish_reason
        return [
            OfflineCompletion(
                tuple(p), tuple(t), self.tokenizer.decode(t), r, None if lp is None else tuple(lp), plp
            )
            for p, t, r, lp, plp in zip(prompts, tokens, reasons, logprobs, prompt_logprobs, strict=True)
        ]
