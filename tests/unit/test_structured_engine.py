"""Structured output in the engine core, with the fake executor and fake grammars (tests/unit/engine_fakes):
masks go with the steps that sample (and only for grammar rows), the grammar decides the finish (terminated
-> stop, even before min_tokens and with ignore_eos; max_tokens mid-object -> length), preemption keeps the
matcher, resume ids are replayed, budget errors and refused tokens end only their request; through
EngineLoop: compiles happen before queueing, a compile error is the request's error naming the field, and a
compile in progress blocks nobody. One test drives a real grammar (the default model's tokenizer) through the
scheduler and checks every finished answer against its schema with jsonschema."""

from __future__ import annotations

import json
import threading

import jsonschema
import numpy as np
import pytest

from paddlellm.engine.loop import EngineLoop
from paddlellm.errors import InvalidRequest
from paddlellm.sampling import SamplingParams
from paddlellm.structured.bitmask import unpack_token_bitmask
from paddlellm.structured.compiler import GrammarCompiler
from paddlellm.structured.spec import StructuredSpec
from paddlellm.structured.tokenizer_info import TokenizerInfo
from paddlellm.text.tokenizer import TextTokenizer
from tests.unit.engine_fakes import (
    FakeCompiler,
    FakeGrammar,
    collect,
    grammar_params,
    make_engine,
    prompt,
)

EOS = 2
WORD = (5, 6, 7)
TAIL = tuple(range(10, 20))


def finals(outputs) -> dict:
    return {o.request_id: o for o in outputs if o.finished}


# ---------------------------------------------------------------- scheduler and step


def test_masks_go_with_sampling_steps_of_grammar_rows_only() -> None:
    engine, ex = make_engine(max_num_batched_tokens=16, max_num_seqs=4)
    g = FakeGrammar(WORD)
    engine.add_request("g", prompt(40, 1), grammar_params(max_tokens=8, temperature=0.0), grammar=g)
    engine.add_request("plain", prompt(5, 2), SamplingParams(max_tokens=8, temperature=0.0))
    outs = engine.run_until_done()
    tokens, done = collect(outs), finals(outs)
    assert tokens["g"] == list(WORD) and done["g"].finish_reason == "stop"  # terminated: no EOS spent
    assert done["plain"].finish_reason == "length"
    with_mask = [c for c in ex.calls if c.grammar_masks]
    assert all(set(c.grammar_masks) == {"g"} for c in with_mask)
    assert len(with_mask) == len(WORD) == g.matchers[0].fills  # the 40-token prompt took 3 chunks first
    for i, c in enumerate(with_mask):
        allowed = np.flatnonzero(unpack_token_bitmask(c.grammar_masks["g"], 1000))
        assert allowed.tolist() == [WORD[i]]
    prefill_chunks = [
        c for c in ex.calls if "g" in c.num_scheduled_tokens and c.num_scheduled_tokens["g"] > 1
    ]
    assert len(prefill_chunks) == 3 and not any(c.grammar_masks for c in prefill_chunks[:2])


def test_requests_without_a_grammar_send_no_masks() -> None:
    engine, ex = make_engine()
    for i in range(4):
        engine.add_request(f"r{i}", prompt(6, i), SamplingParams(max_tokens=5, temperature=0.7, seed=i))
    engine.run_until_done()
    assert ex.calls and all(c.grammar_masks == {} for c in ex.calls)
    assert engine.take_grammar_timings().mask_seconds == ()


def test_max_tokens_mid_object_ends_with_length() -> None:
    engine, _ = make_engine()
    g = FakeGrammar((5,), TAIL, end="eos")
    engine.add_request("g", prompt(6), grammar_params(max_tokens=6, temperature=0.9, seed=3), grammar=g)
    outs = engine.run_until_done()
    out = collect(outs)["g"]
    assert finals(outs)["g"].finish_reason == "length" and len(out) == 6
    assert out[0] == 5 and set(out[1:]) <= set(TAIL)
    assert g.matchers[0].accepted == out


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_a_terminated_grammar_stops_before_min_tokens_and_despite_ignore_eos(ignore_eos: bool) -> None:
    engine, _ = make_engine()
    params = grammar_params(max_tokens=20, min_tokens=10, ignore_eos=ignore_eos, temperature=0.0)
    engine.add_request("closed", prompt(6, 1), params, grammar=FakeGrammar(WORD))
    # This one allows only EOS after its word (accepting, not terminated): EOS is drawn, min_tokens does not
    # ban it for a grammar row, and it stops although min_tokens is not reached and ignore_eos may be set.
    engine.add_request("eos", prompt(6, 2), params, grammar=FakeGrammar((5, 6), end="eos"))
    outs = engine.run_until_done()
    tokens, done = collect(outs), finals(outs)
    assert tokens["closed"] == list(WORD) and done["closed"].finish_reason == "stop"
    assert tokens["eos"] == [5, 6, EOS] and done["eos"].finish_reason == "stop"


def test_preemption_keeps_the_matcher_and_changes_no_token() -> None:
    def run(num_blocks: int):
        engine, _ = make_engine(num_blocks=num_blocks, max_num_seqs=4)
        grammars = {}
        for i in range(4):
            grammars[f"g{i}"] = g = FakeGrammar((5,), TAIL, end="eos")
            params = grammar_params(max_tokens=30, temperature=0.8, seed=i)
            engine.add_request(f"g{i}", prompt(20, i), params, grammar=g)
        outs = engine.run_until_done()
        return engine, grammars, collect(outs), finals(outs)

    roomy, _, want, _ = run(64)
    assert roomy.scheduler.num_preemptions == 0
    tight, grammars, got, done = run(6)  # 4 x 50 tokens need 16 blocks of 16: preemptions
    assert tight.scheduler.num_preemptions > 0
    assert got == want
    for rid, g in grammars.items():
        assert len(g.matchers) == 1  # the same matcher all along: nothing rebuilt, nothing replayed
        m = g.matchers[0]
        assert m.replays == [] and m.accepted == got[rid] and done[rid].finish_reason == "length"


def test_resume_ids_are_replayed_into_the_matcher() -> None:
    engine, _ = make_engine()
    g = FakeGrammar(WORD)
    engine.add_request("r", prompt(6), grammar_params(max_tokens=8), resume_ids=[5], grammar=g)
    outs = engine.run_until_done()
    assert collect(outs)["r"] == [6, 7] and finals(outs)["r"].finish_reason == "stop"
    assert g.matchers[0].replays == [(5,)] and g.matchers[0].accepted == [5, 6, 7]

    complete = FakeGrammar(WORD)
    engine.add_request("done", prompt(6), grammar_params(max_tokens=8), resume_ids=WORD, grammar=complete)
    outs = engine.run_until_done()
    assert collect(outs)["done"] == [] and finals(outs)["done"].finish_reason == "stop"


def test_resume_ids_the_grammar_refuses_are_a_400_and_queue_nothing() -> None:
    engine, ex = make_engine()
    with pytest.raises(InvalidRequest, match="id 9 at output 1 is not allowed") as e:
        engine.add_request(
            "r", prompt(6), grammar_params(max_tokens=8), resume_ids=[5, 9], grammar=FakeGrammar(WORD)
        )
    assert e.value.param == "resume_ids"
    assert not engine.has_unfinished() and not ex.calls


def test_a_budget_error_while_filling_ends_only_that_request() -> None:
    engine, _ = make_engine()
    g = FakeGrammar((5,), TAIL, end="eos", param="guided_regex", fail_fill_at=2)
    engine.add_request("g", prompt(6, 1), grammar_params(max_tokens=10), grammar=g)
    engine.add_request("plain", prompt(6, 2), SamplingParams(max_tokens=10))
    outs = engine.run_until_done()
    tokens, done = collect(outs), finals(outs)
    assert done["g"].finish_reason == "error" and isinstance(done["g"].error, InvalidRequest)
    assert done["g"].error.param == "guided_regex" and len(tokens["g"]) == 2
    assert done["plain"].finish_reason == "length" and len(tokens["plain"]) == 10


def test_a_token_the_grammar_refuses_ends_that_request_with_a_400_naming_its_field() -> None:
    # What a grammar needing text the vocabulary cannot spell looks like: the mask allows only EOS, which
    # the grammar then refuses. The client gets an InvalidRequest (a 400) naming its field, not a 500.
    engine, _ = make_engine(ignore_masks=True)  # a "model" that ignores the masks
    engine.add_request("g", prompt(6, 1), grammar_params(max_tokens=10), grammar=FakeGrammar(WORD))
    engine.add_request("plain", prompt(6, 2), SamplingParams(max_tokens=10))
    outs = engine.run_until_done()
    done = finals(outs)
    assert done["g"].finish_reason == "error" and isinstance(done["g"].error, InvalidRequest)
    assert "cannot be met with this model's vocabulary" in str(done["g"].error)
    assert done["g"].error.param == "structured_outputs.regex"  # the spec's field (grammar_params)
    assert done["plain"].finish_reason == "length"


def test_mask_fill_time_is_recorded_per_step_with_grammar_rows() -> None:
    engine, _ = make_engine()
    for i in range(3):
        engine.add_request(f"g{i}", prompt(6, i), grammar_params(max_tokens=8), grammar=FakeGrammar(WORD))
    engine.run_until_done()
    timings = engine.take_grammar_timings()
    assert len(timings.mask_seconds) == len(WORD)  # three rows per step, one observation per step
    assert all(t >= 0 for t in timings.mask_seconds)
    assert engine.take_grammar_timings().mask_seconds == ()  # drained


# ---------------------------------------------------------------- EngineLoop: compile before queueing


class Sink:
    def __init__(self) -> None:
        self.outputs = []
        self.done = threading.Event()

    def __call__(self, out) -> None:
        self.outputs.append(out)
        if out.finished:
            self.done.set()

    @property
    def tokens(self) -> list[int]:
        return [t for o in self.outputs for t in o.new_token_ids]


SPEC = StructuredSpec.json_schema({"type": "object"}, param="response_format.json_schema.schema")


@pytest.fixture
def loop_with(request):
    loops = []

    def start(compiler, **kw):
        engine, ex = make_engine(grammar_compiler=compiler, **kw)
        loop = EngineLoop(engine).start()
        loops.append(loop)
        return loop, engine, ex

    yield start
    for loop in loops:
        loop.stop()


def test_a_compile_error_is_the_requests_error_naming_the_field(loop_with) -> None:
    compiler = FakeCompiler()
    loop, _, ex = loop_with(compiler)
    bad, plain = Sink(), Sink()
    loop.add("bad", prompt(6, 1), SamplingParams(max_tokens=4, structured_outputs=SPEC), bad)
    loop.add("plain", prompt(6, 2), SamplingParams(max_tokens=4), plain)
    spec, future = compiler.pending[0]
    future.set_exception(InvalidRequest("unsupported JSON Schema keyword 'not' at /", param=spec.param))
    assert bad.done.wait(10) and plain.done.wait(10)
    (out,) = bad.outputs
    assert out.finish_reason == "error" and out.new_token_ids == () and out.num_output_tokens == 0
    assert isinstance(out.error, InvalidRequest) and out.error.param == "response_format.json_schema.schema"
    assert all("bad" not in c.num_scheduled_tokens for c in ex.calls)  # never queued
    assert plain.outputs[-1].finish_reason == "length" and loop.healthy()


def test_a_compile_in_progress_blocks_no_other_request(loop_with) -> None:
    compiler = FakeCompiler()
    loop, _, _ = loop_with(compiler)
    waiting, plain = Sink(), Sink()
    loop.add(
        "g", prompt(6, 1), SamplingParams(max_tokens=8, temperature=0.0, structured_outputs=SPEC), waiting
    )
    loop.add("plain", prompt(6, 2), SamplingParams(max_tokens=12), plain)
    assert plain.done.wait(10) and len(plain.tokens) == 12  # ran to the end while "g" compiled
    assert not waiting.outputs and loop.num_in_flight == 1
    compiler.pending[0][1].set_result(FakeGrammar(WORD))
    assert waiting.done.wait(10)
    assert waiting.tokens == list(WORD) and waiting.outputs[-1].finish_reason == "stop"


def test_abort_while_compiling_ends_the_request_and_drops_the_compile(loop_with) -> None:
    compiler = FakeCompiler()
    loop, engine, _ = loop_with(compiler)
    sink = Sink()
    loop.add("g", prompt(6), SamplingParams(max_tokens=8, structured_outputs=SPEC), sink)
    loop.abort("g")
    assert sink.done.wait(10)
    assert [o.finish_reason for o in sink.outputs] == ["abort"]
    compiler.pending[0][1].set_result(FakeGrammar(WORD))  # too late: dropped
    again = Sink()
    loop.add("g", prompt(6), SamplingParams(max_tokens=3), again)  # the id is free again
    assert again.done.wait(10) and len(again.tokens) == 3 and len(sink.outputs) == 1
    assert not engine.has_unfinished()


def test_compile_time_is_recorded_on_misses_only(loop_with) -> None:
    hit = FakeGrammar(WORD)
    hit.cache_hit = True
    for grammar, expected in ((FakeGrammar(WORD), (0.002,)), (hit, ())):
        loop, engine, _ = loop_with(FakeCompiler(grammar, auto=True))
        sink = Sink()
        loop.add("g", prompt(6), SamplingParams(max_tokens=8, structured_outputs=SPEC), sink)
        assert sink.done.wait(10) and sink.tokens == list(WORD)
        assert engine.take_grammar_timings().compile_seconds == expected


# ---------------------------------------------------------------- a real grammar through the scheduler

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
        "pet": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": "^[a-z]{1,6}$"}]},
    },
    "required": ["name", "age", "tags", "pet"],
    "additionalProperties": False,
}


def test_a_real_grammar_through_the_scheduler_gives_valid_answers(default_model_dir: str) -> None:
    """The fake model draws among the allowed tokens of the real mask (like a random walk); every answer that
    finished with "stop" must validate, and the matcher must have accepted every token."""
    info = TokenizerInfo.from_dir(default_model_dir)
    text = TextTokenizer.from_dir(default_model_dir)
    with GrammarCompiler(info, max_workers=1) as compiler:
        engine, _ = make_engine(
            num_blocks=256,
            vocab_size=info.vocab_size,
            eos=info.eos_token_ids,
            grammar_compiler=compiler,
            max_num_seqs=16,
        )
        spec = StructuredSpec.json_schema(SCHEMA)
        for i in range(16):
            params = SamplingParams(
                max_tokens=120, temperature=0.0 if i % 2 else 0.8, seed=i, structured_outputs=spec
            )
            engine.add_request(f"r{i}", prompt(8, i), params)  # compiled synchronously (once: cached)
        outs = engine.run_until_done()
        assert compiler.stats().misses == 1 and compiler.stats().hits == 15
    tokens, done = collect(outs), finals(outs)
    stopped = [rid for rid, o in done.items() if o.finish_reason == "stop"]
    assert len(stopped) >= 8, {rid: o.finish_reason for rid, o in done.items()}
    for rid in stopped:
        answer = text.decode([t for t in tokens[rid] if t not in info.eos_token_ids])
        jsonschema.validate(json.loads(answer), SCHEMA)
    assert all(o.finish_reason in ("stop", "length") for o in done.values())
