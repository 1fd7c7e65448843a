"""Structured output under TP=2 equals TP=1 (fp32, quantization none): the scheduler fills each grammar row's
mask once and the step carries it to every rank, so the ranks sample under the same mask; greedy and seeded
rows, JSON schema and regex, alongside a row without a grammar."""

from __future__ import annotations

import json

import jsonschema

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.engine.outputs import RequestOutput
from paddlellm.executor.multiproc import MultiprocExecutor
from paddlellm.model_info import ModelInfo
from paddlellm.sampling import SamplingParams
from paddlellm.structured.spec import StructuredSpec
from paddlellm.text.tokenizer import TextTokenizer

BLOCKS = 128
SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 1, "maxItems": 2},
    },
    "required": ["n", "tags"],
    "additionalProperties": False,
}
Requests = dict[str, tuple[list[int], SamplingParams]]


def _run(path: str, tp: int, reqs: Requests) -> dict[str, list[RequestOutput]]:
    config = EngineConfig(
        model=path,
        tensor_parallel_size=tp,
        max_model_len=256,
        block_size=16,
        max_num_seqs=8,
        max_num_batched_tokens=32,
        num_gpu_blocks_override=BLOCKS,
        quantization="none",
    )
    info = ModelInfo.from_dir(path)
    ex = MultiprocExecutor(config, info, BLOCKS)
    engine = LLMEngine(config, ex, info, BLOCKS)
    try:
        for rid, (ids, sp) in reqs.items():
            engine.add_request(rid, ids, sp)  # compiled here (the engine's compiler, from the checkpoint)
        outs: dict[str, list[RequestOutput]] = {}
        for o in engine.run_until_done():
            outs.setdefault(o.request_id, []).append(o)
        return outs
    finally:
        engine.shutdown()


def test_tp2_with_a_grammar_equals_tp1(tiny_checkpoint) -> None:
    path = tiny_checkpoint(arch="qwen2", tokenizer="smollm", tie=False)
    json_spec = StructuredSpec.json_schema(SCHEMA)
    regex = StructuredSpec.regex(r"[a-z]{2,8}( [a-z]{2,8}){0,3}\.")
    reqs: Requests = {}
    for i in range(6):
        spec = json_spec if i < 4 else regex
        reqs[f"g{i}"] = (
            [100 + 37 * j % 3000 for j in range(5 + 7 * i)],
            SamplingParams(
                max_tokens=32, temperature=0.0 if i % 2 == 0 else 0.9, seed=i, structured_outputs=spec
            ),
        )
    reqs["plain"] = ([101, 102, 103], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    ref, got = _run(path, 1, reqs), _run(path, 2, reqs)
    tokens = {rid: [t for o in outs for t in o.new_token_ids] for rid, outs in ref.items()}
    assert {rid: [t for o in outs for t in o.new_token_ids] for rid, outs in got.items()} == tokens
    assert {rid: outs[-1].finish_reason for rid, outs in got.items()} == {
        rid: outs[-1].finish_reason for rid, outs in ref.items()
    }
    text = TextTokenizer.from_dir(path)
    for rid in ("g0", "g1", "g2", "g3"):  # a random-weight model, but the grammar holds
        answer = text.decode(tokens[rid])
        assert answer.startswith("{"), answer
        if ref[rid][-1].finish_reason == "stop":
            jsonschema.validate(json.loads(answer), SCHEMA)
