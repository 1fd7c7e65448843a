"""GrammarCompiler: compiles off the caller's thread, caches by canonical key (one compile per schema), turns
what the library refuses into InvalidRequest naming the keyword and the field, bounds hostile input;
TokenizerInfo: the model's padded rows are never allowed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from paddlellm.errors import CheckpointError, InvalidRequest
from paddlellm.structured.bitmask import unpack_token_bitmask
from paddlellm.structured.compiler import CompilerStats, GrammarCompiler
from paddlellm.structured.matcher import GrammarBudgetExceeded
from paddlellm.structured.spec import StructuredSpec
from paddlellm.structured.tokenizer_info import TokenizerInfo
from tests.unit.structured_walk import LLAMA2_PADDED_ROWS, Vocab, llama2_vocab, smol_vocab

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.fixture(scope="module")
def smol(default_model_dir: str) -> Vocab:
    return smol_vocab(default_model_dir)


@pytest.fixture(scope="module")
def llama2(llama2_tokenizer_dir: str) -> Vocab:
    return llama2_vocab(llama2_tokenizer_dir)


@pytest.fixture(scope="module")
def smol_compiler(smol: Vocab) -> Iterator[GrammarCompiler]:
    with GrammarCompiler(smol.info, max_workers=1) as compiler:
        yield compiler


class CountingCompiler(GrammarCompiler):
    """Counts the compiles that actually run (on the pool's threads)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.threads: set[str] = set()

    def _compile(self, spec: StructuredSpec):  # noqa: ANN202 - the private template type
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        return super()._compile(spec)


def test_same_schema_compiles_once_off_the_callers_thread(smol: Vocab) -> None:
    with CountingCompiler(smol.info, max_workers=2, cache_size=4) as compiler:
        futures = [compiler.compile(StructuredSpec.json_schema(SCHEMA, param=f"p{i}")) for i in range(8)]
        results = [f.result(timeout=60) for f in futures]
        again = compiler.compile(
            StructuredSpec.json_schema(
                '{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}'
            )
        ).result()
        assert compiler.calls == 1  # eight concurrent requests and a later one: one compile
        assert all(r._template is again._template for r in results)  # one shared start state
        assert [r.spec.param for r in results] == [f"p{i}" for i in range(8)]  # each keeps its own spec
        assert [r.cache_hit for r in results] == [False] + [True] * 7 and again.cache_hit
        assert compiler.threads and threading.current_thread().name not in compiler.threads
        assert compiler.stats() == CompilerStats(hits=8, misses=1, cached=1)
        assert again.compile_seconds > 0
        assert again.matcher().param == "response_format.json_schema.schema"


def test_a_cached_refusal_names_each_callers_field(smol: Vocab) -> None:
    bad = {"type": "object", "not": {}}
    with CountingCompiler(smol.info, max_workers=1) as compiler:
        for param in ("response_format.json_schema.schema", "guided_json", "structured_outputs.json"):
            with pytest.raises(InvalidRequest) as e:
                compiler.compile(StructuredSpec.json_schema(bad, param=param)).result(timeout=60)
            assert e.value.param == param and "'not'" in e.value.message
        assert compiler.calls == 1


def test_lru_evicts_the_least_recently_used(smol: Vocab) -> None:
    with CountingCompiler(smol.info, max_workers=1, cache_size=2) as compiler:
        specs = [StructuredSpec.regex(p) for p in ("a+", "b+", "c+")]
        for s in (specs[0], specs[1], specs[0], specs[2]):  # "b+" is then the oldest
            compiler.compile(s).result()
        assert compiler.calls == 3
        compiler.compile(specs[0]).result()
        assert compiler.calls == 3
        compiler.compile(specs[1]).result()
        assert compiler.calls == 4


@pytest.mark.parametrize(
    ("spec", "param", "words"),
    [
        (
            StructuredSpec.json_schema({"type": "object", "properties": {"x": {"not": {"type": "string"}}}}),
            "response_format.json_schema.schema",
            "unsupported JSON Schema keyword 'not' at /properties/x",
        ),
        (
            StructuredSpec.json_schema({"type": "array", "uniqueItems": True}, param="guided_json"),
            "guided_json",
            "'uniqueItems' at /",
        ),
        (
            StructuredSpec.json_schema(
                {
                    "$defs": {"A": {"type": "object", "if": {}, "then": {}}},
                    "properties": {"a": {"$ref": "#/$defs/A"}},
                }
            ),
            "response_format.json_schema.schema",
            "'if' at /$defs/A",
        ),
        # the schema's own x-guidance options cannot switch lenient (silent ignoring) back on
        (
            StructuredSpec.json_schema(
                {"type": "object", "x-guidance": {"lenient": True}, "propertyNames": {"pattern": "^a"}}
            ),
            "response_format.json_schema.schema",
            "'propertyNames'",
        ),
        (
            StructuredSpec.json_schema({"type": "string", "format": "postal-code"}),
            "response_format.json_schema.schema",
            "Unknown format: postal-code",
        ),
        (
            StructuredSpec.json_schema({"type": "array", "minItems": 3, "maxItems": 2}),
            "response_format.json_schema.schema",
            "minItems (3) is greater than maxItems (2)",
        ),
        (
            StructuredSpec.json_schema({"type": "string", "pattern": "(a|b"}),
            "response_format.json_schema.schema",
            "unclosed group",
        ),
        (
            StructuredSpec.json_schema({"$ref": "#/$defs/missing"}),
            "response_format.json_schema.schema",
            "does not exist",
        ),
        (StructuredSpec.regex("(a", param="guided_regex"), "guided_regex", "unclosed group"),
        (
            StructuredSpec.grammar("start: undefined_rule", param="guided_grammar"),
            "guided_grammar",
            "undefined_rule",
        ),
        (StructuredSpec.grammar("root ::= (", param="guided_grammar"), "guided_grammar", "GBNF"),
    ],
)
def test_refused_specs_name_the_problem_and_the_field(
    smol_compiler: GrammarCompiler,
    spec: StructuredSpec,
    param: str,
    words: str,
) -> None:
    fut = smol_compiler.compile(spec)
    with pytest.raises(InvalidRequest) as e:
        fut.result(timeout=60)
    assert e.value.param == param
    assert words in e.value.message, e.value.message
    assert "\n" not in e.value.message and len(e.value.message) < 700
    misses = smol_compiler.stats().misses
    with pytest.raises(InvalidRequest):
        smol_compiler.compile(spec).result(timeout=60)
    assert smol_compiler.stats().misses == misses  # a refused spec stays cached: a repeat costs a lookup


@pytest.mark.parametrize(
    "spec",
    [
        StructuredSpec.regex("(a|aa)*b{1000}"),  # catastrophic for a backtracking engine
        StructuredSpec.regex("(x+x+)+y"),
        StructuredSpec.regex("((a{100}){100}){100}"),  # a million-state expansion: the lexer's fuel
        StructuredSpec.json_schema({"type": "string", "pattern": "^(.*a){30}$"}),
        StructuredSpec.json_schema({"enum": [f"value-{i}" for i in range(4000)]}),  # a huge enum
        StructuredSpec.choice([f"choice {i}" for i in range(4000)]),
        StructuredSpec.json_schema(
            {
                "type": "object",
                "properties": {f"p{i}": {"type": "string"} for i in range(2000)},
                "required": [f"p{i}" for i in range(2000)],
            }
        ),
    ],
)
def test_hostile_input_costs_bounded_time(smol_compiler: GrammarCompiler, spec: StructuredSpec) -> None:
    """Compiled or refused within budget; the first masks of a compiled one are bounded too, and a budget that
    runs out mid-output is the request's InvalidRequest naming its field, never a hang or a crash."""
    start = time.perf_counter()
    try:
        compiled = smol_compiler.compile(spec).result(timeout=30)
    except InvalidRequest as e:
        assert e.param == spec.param
        compiled = None
    assert time.perf_counter() - start < 10
    if compiled is not None:
        m = compiled.matcher()
        row = np.empty(m.mask_words, dtype=np.int32)
        start = time.perf_counter()
        try:
            for _ in range(8):
                m.fill_mask(row)
                allowed = np.flatnonzero(unpack_token_bitmask(row, m.vocab_size))
                if m.is_terminated or not m.accept(int(allowed[-1])):
                    break
        except GrammarBudgetExceeded as e:
            assert e.param == spec.param and "budget" in e.message
        assert time.perf_counter() - start < 5


def test_padding_rows_are_never_allowed_and_special_tokens_only_eos(llama2: Vocab) -> None:
    assert llama2.info.vocab_size == LLAMA2_PADDED_ROWS and llama2.info.tokenizer_vocab_size == 32000
    with GrammarCompiler(llama2.info, max_workers=1) as compiler:
        m = compiler.compile(StructuredSpec.regex(r"[\s\S]*")).result().matcher()  # allows any text
    row = np.empty(m.mask_words, dtype=np.int32)
    m.fill_mask(row)
    allowed = unpack_token_bitmask(row, m.vocab_size)
    assert not allowed[32000:].any()
    assert allowed[2] and not allowed[0] and not allowed[1]  # EOS yes (accepting); <unk>, <s> never
    assert allowed[3:32000].sum() > 31000


def test_tokenizer_info_reads_the_checkpoint(default_model_dir: str, tmp_path) -> None:  # noqa: ANN001
    info = TokenizerInfo.from_dir(default_model_dir)
    assert (info.vocab_size, info.tokenizer_vocab_size, info.eos_token_ids) == (49152, 49152, (2,))
    assert info.mask_words == 1536
    with pytest.raises(CheckpointError, match="vocab_size"):
        TokenizerInfo.from_dir(default_model_dir, vocab_size=1000)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        TokenizerInfo.from_dir(str(tmp_path))
