"""GrammarCompiler: StructuredSpec -> CompiledGrammar, off the caller's thread, cached by the spec's key.

Algorithm: `compile(spec)` looks the spec's `canonical_key()` up in an LRU of futures; a miss submits the
compile to a small thread pool and stores the future at once, so concurrent requests with one schema share
one compile and the engine loop never waits for a compile it did not ask to wait for. Each caller gets its
own future, resolved from the shared one with the caller's spec (so errors name the caller's field). A compile
  1. turns the spec into an llguidance grammar (JSON schema with compact or flexible whitespace and
     `lenient` forced off, so an unimplemented keyword is an error, never silently dropped; regex; choices
     as Lark string alternatives; Lark, or GBNF converted to Lark),
  2. builds the start-state matcher under `CompileLimits` (llguidance's fuel and size budgets: a hostile
     regex or a huge enum fails with "limit" instead of running on), and
  3. computes one mask, so the lazily built lexer states for the start are paid here, not in a step.
llguidance releases the GIL while it builds, so compiles do not stall the engine loop's Python.
Every failure the request caused is an `InvalidRequest` whose `param` is the spec's and whose message names
the unsupported keyword and where in the schema it is. Failed compiles stay cached (a repeated bad schema
costs a lookup); an internal error is not cached.

Thread-safe: `compile` may be called from any thread.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import llguidance
import numpy as np
from llguidance.gbnf_to_lark import gbnf_to_lark

from paddlellm.errors import InvalidRequest
from paddlellm.structured.matcher import GrammarMatcher
from paddlellm.structured.spec import StructuredSpec
from paddlellm.structured.tokenizer_info import TokenizerInfo

_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[([^\]]*)\]")
# Schema keywords whose values are maps from names to subschemas (their keys are names, not keywords).
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_DATA = frozenset({"enum", "const", "default", "examples"})  # values are data, not schemas


@dataclass(frozen=True)
class CompileLimits:
    """llguidance's budgets for one grammar (None: the library's default). Each bounds time or memory."""

    max_grammar_size: int | None = 200_000  # grammar symbols (a huge enum or schema)
    initial_lexer_fuel: int | None = 1_000_000  # building the regexes (~50k/ms: about 20 ms)
    step_lexer_fuel: int | None = 200_000  # one mask's lexer work (~14k/ms)
    step_max_items: int | None = 50_000  # one mask's Earley items (~20k/ms)
    max_lexer_states: int | None = 100_000  # lexer DFA states (1-2 kB each)

    def llguidance_limits(self) -> Any:
        return llguidance.LLParserLimits(
            max_grammar_size=self.max_grammar_size,
            initial_lexer_fuel=self.initial_lexer_fuel,
            step_lexer_fuel=self.step_lexer_fuel,
            step_max_items=self.step_max_items,
            max_lexer_states=self.max_lexer_states,
            verbose_errors=False,  # errors go to clients: no parser dumps
        )


@dataclass(frozen=True)
class _Template:
    """What the cache holds: the start state, shared by every request with the same canonical key."""

    llmatcher: Any  # llguidance.LLMatcher in the start state, never advanced itself
    compile_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)


@dataclass(frozen=True)
class CompiledGrammar:
    """One request's compiled spec; `matcher()` copies the shared start state."""

    key: str
    spec: StructuredSpec  # the caller's (its param names errors)
    compile_seconds: float  # of the compile that produced the cached start state
    cache_hit: bool  # the compile had been requested before (observe compile time on misses only)
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    _template: _Template = field(compare=False, repr=False)

    def matcher(self) -> GrammarMatcher:
        with self._template.lock:  # deep_copy borrows the template; one copier at a time
            copy = self._template.llmatcher.deep_copy()
        return GrammarMatcher(copy, self.vocab_size, self.eos_token_ids, self.spec.param)


@dataclass(frozen=True)
class CompilerStats:
    hits: int
    misses: int
    cached: int


class GrammarCompiler:
    def __init__(
        self,
        tokenizer_info: TokenizerInfo,
        max_workers: int = 2,
        cache_size: int = 256,
        limits: CompileLimits | None = None,
    ) -> None:
        if max_workers < 1 or cache_size < 1:
            raise ValueError("max_workers and cache_size must be >= 1")
        self.tokenizer_info = tokenizer_info
        self.cache_size = cache_size
        self.limits = limits or CompileLimits()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grammar-compile")
        self._cache: OrderedDict[str, Future[_Template]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def compile(self, spec: StructuredSpec) -> Future[CompiledGrammar]:
        """A future of the compiled grammar; its exception is InvalidRequest (with this spec's param) for a
        spec the library refuses. Never blocks on a compile."""
        key = spec.canonical_key()
        with self._lock:
            shared = self._cache.get(key)
            hit = shared is not None
            if shared is not None:
                self._cache.move_to_end(key)
                self._hits += 1
            else:
                self._misses += 1
                shared = self._pool.submit(self._compile, spec)
                self._cache[key] = shared
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if not hit:
            shared.add_done_callback(lambda f: self._forget_internal_error(key, f))
        out: Future[CompiledGrammar] = Future()
        out.set_running_or_notify_cancel()
        shared.add_done_callback(lambda f: self._deliver(f, out, key, spec, hit))
        return out

    def stats(self) -> CompilerStats:
        with self._lock:
            return CompilerStats(self._hits, self._misses, len(self._cache))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> GrammarCompiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the compile itself (pool thread) ----------------------------------------------------------------

    def _forget_internal_error(self, key: str, fut: Future[_Template]) -> None:
        if fut.cancelled() or fut.exception() is None or isinstance(fut.exception(), InvalidRequest):
            return
        with self._lock:
            if self._cache.get(key) is fut:
                del self._cache[key]

    def _deliver(
        self,
        shared: Future[_Template],
        out: Future[CompiledGrammar],
        key: str,
        spec: StructuredSpec,
        hit: bool,
    ) -> None:
        """The shared compile's outcome, for this caller: its spec, its param in errors."""
        if shared.cancelled():
            out.set_exception(InvalidRequest("grammar compile cancelled (shutting down)", param=spec.param))
            return
        error = shared.exception()
        if isinstance(error, InvalidRequest):
            out.set_exception(InvalidRequest(error.message, param=spec.param))
        elif error is not None:
            out.set_exception(error)
        else:
            template = shared.result()
            info = self.tokenizer_info
            out.set_result(
                CompiledGrammar(
                    key, spec, template.compile_seconds, hit, info.vocab_size, info.eos_token_ids, template
                )
            )

    def _compile(self, spec: StructuredSpec) -> _Template:
        start = time.perf_counter()
        info = self.tokenizer_info
        grammar = _llguidance_grammar(spec)
        m = llguidance.LLMatcher(
            info.lltokenizer, grammar, log_level=0, limits=self.limits.llguidance_limits()
        )
        if m.is_error():
            raise _invalid(spec, m.get_error())
        scratch = np.empty(info.mask_words, dtype=np.int32)
        m.unsafe_compute_mask_ptr(scratch.ctypes.data, scratch.nbytes)  # warm the start state's lexer
        if m.is_error():
            raise _invalid(spec, m.get_error())
        if not scratch.any():
            raise InvalidRequest("the grammar allows no output at all", param=spec.param)
        return _Template(m, time.perf_counter() - start)


def _llguidance_grammar(spec: StructuredSpec) -> str:
    if spec.kind in ("json_schema", "json_object"):
        schema = spec.value if spec.kind == "json_schema" else '{"type":"object"}'
        options = {"whitespace_flexible": spec.whitespace_flexible, "lenient": False}
        try:
            # overrides win over the schema's own "x-guidance" options: lenient cannot be switched back on
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)  # type: ignore[arg-type]
        except ValueError as e:
            raise InvalidRequest(f"invalid schema: {e}", param=spec.param) from None
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(str(spec.value))
    if spec.kind == "choice":
        # One terminal (lexer-level alternation): thousands of choices stay one DFA instead of a parser row
        # per choice, which would hit llguidance's row limit mid-generation. Lark string literals take JSON
        # string syntax.
        lark = "start: CHOICE\nCHOICE: " + " | ".join(json.dumps(c) for c in spec.value)
        return llguidance.LLMatcher.grammar_from_lark(lark)
    text = str(spec.value)
    if spec.grammar_syntax == "gbnf":
        try:
            text = gbnf_to_lark(text)
        except Exception as e:  # GbnfToLarkError and whatever its parser raises on garbage
            raise InvalidRequest(f"invalid GBNF grammar: {e}", param=spec.param) from None
    return llguidance.LLMatcher.grammar_from_lark(text)


def _invalid(spec: StructuredSpec, error: str) -> InvalidRequest:
    """The library's error as a client error: the unsupported keyword(s) and where, or the first line."""
    found = _UNIMPLEMENTED.search(error)
    if found and spec.kind == "json_schema":
        keywords = [k.strip().strip('"') for k in found.group(1).split(",") if k.strip()]
        where = [_keyword_path(spec.schema, k) for k in keywords]
        named = ", ".join(f"'{k}'" + (f" at {w}" if w else "") for k, w in zip(keywords, where, strict=True))
        return InvalidRequest(f"unsupported JSON Schema keyword {named}", param=spec.param)
    reason = " ".join(error.split()) or "grammar compile failed"  # one line; the library's dumps are off
    return InvalidRequest(f"cannot compile {spec.kind.replace('_', ' ')}: {reason[:500]}", param=spec.param)


def _keyword_path(schema: Any, keyword: str) -> str:
    """JSON pointer of the first schema object using `keyword` (breadth first), or ""."""
    queue: list[tuple[Any, str]] = [(schema, "")]
    while queue:
        node, path = queue.pop(0)
        if isinstance(node, list):
            queue.extend((v, f"{path}/{i}") for i, v in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        if keyword in node:
            return path or "/"
        for k, v in node.items():
            escaped = k.replace("~", "~0").replace("/", "~1")
            if k in _SCHEMA_MAPS and isinstance(v, dict):
                queue.extend(
                    (sub, f"{path}/{escaped}/{n.replace('~', '~0').replace('/', '~1')}")
                    for n, sub in v.items()
                )
            elif k not in _DATA:
                queue.append((v, f"{path}/{escaped}"))
    return ""
