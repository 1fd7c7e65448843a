"""LLM offline entry over the fake executor and a toy tokenizer (real-model tests: test_engine_real.py)."""

import pytest

from paddlellm.errors import InvalidRequest
from paddlellm.llm import LLM
from paddlellm.sampling import SamplingParams
from tests.unit.engine_fakes import make_engine


class ByteTokenizer:
    def encode(self, text):
        return [b + 3 for b in text.encode()]

    def decode(self, ids):
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode(errors="replace")

    def encode_chat(self, messages):
        return self.encode("".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>")


def test_generate_keeps_prompt_order_and_matches_the_engine():
    engine, _ = make_engine(max_num_seqs=2, scheduler_max_size=1)
    llm = LLM.from_engine(engine, ByteTokenizer())
    params = [SamplingParams(max_tokens=3 + i, temperature=0.0) for i in range(4)]
    outs = llm.generate(["hi", [10, 11, 12], "hello there", "x"], params)
    assert [len(c.token_ids) for c in outs] == [3, 4, 5, 6]
    assert outs[0].prompt_token_ids == (107, 108) and outs[1].prompt_token_ids == (10, 11, 12)
    assert all(c.finish_reason == "length" for c in outs)
    assert outs[2].text == ByteTokenizer().decode(outs[2].token_ids)
    again = llm.generate(["hello there"], params[2])
    assert again[0].token_ids == outs[2].token_ids
    assert engine.stats().num_free_blocks == 64


def test_chat_uses_the_template():
    engine, _ = make_engine()
    llm = LLM.from_engine(engine, ByteTokenizer())
    (c,) = llm.chat([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=2))
    assert bytes(t - 3 for t in c.prompt_token_ids) == b"<user>hi<assistant>"


def test_a_bad_prompt_rejects_the_whole_batch_before_anything_runs():
    engine, ex = make_engine(max_model_len=16)
    llm = LLM.from_engine(engine, ByteTokenizer())
    with pytest.raises(InvalidRequest, match="29 tokens, but max_model_len is 16"):
        llm.generate(["ok", "much too long for this engine"], SamplingParams(max_tokens=2))
    assert ex.calls == [] and not engine.has_unfinished()
    with pytest.raises(InvalidRequest, match="got 1 sampling params for 2 prompts"):
        llm.generate(["a", "b"], [SamplingParams()])


def test_a_big_offline_batch_never_ages_past_the_ttl():
    now = [0.0]
    engine, ex = make_engine(max_num_seqs=2, scheduler_ttl=5.0, clock=lambda: now[0])
    real_execute = ex.execute

    def slow_execute(sched):
        now[0] += 1.0  # every step takes a "second"
        return real_execute(sched)

    ex.execute = slow_execute
    llm = LLM.from_engine(engine, ByteTokenizer())
    outs = llm.generate([[5 + i, 6, 7] for i in range(20)], SamplingParams(max_tokens=4))
    assert [c.finish_reason for c in outs] == ["length"] * 20
    assert now[0] > 20  # far longer than the TTL overall
