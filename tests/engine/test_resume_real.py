"""Resuming on the real engine (tiny random-weight checkpoint, in-process Paddle executor): a run cut after k
tokens and resumed with them yields exactly the rest of the uncut run, including with penalties (which must
count the resumed ids as output) and seeded sampling (whose draws are keyed by absolute position)."""

import pytest

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.sampling import SamplingParams

pytest.importorskip("paddle", exc_type=ModuleNotFoundError)
# Our own module, imported (not import-or-skipped): if it breaks, this file fails.
import paddlellm.executor.inproc  # noqa: E402, F401

PROMPT = [(97 * i + 5) % 31000 + 100 for i in range(23)]
CASES = {
    "greedy-penalties": SamplingParams(
        max_tokens=16, temperature=0.0, ignore_eos=True, frequency_penalty=2.0, presence_penalty=2.0
    ),
    "seeded": SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=5, ignore_eos=True),
}


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> LLMEngine:
    path = tiny_checkpoint(arch="llama", tokenizer="llama2", seed=7)
    cfg = EngineConfig(
        model=path, block_size=16, max_model_len=512, num_gpu_blocks_override=64, num_threads=2
    )
    return LLMEngine.create(cfg)


def _run(engine: LLMEngine, rid: str, params: SamplingParams, resume: list[int]) -> tuple[list[int], int]:
    engine.add_request(rid, PROMPT, params, resume_ids=resume)
    outs = engine.run_until_done()
    assert outs[-1].finished and outs[-1].num_prompt_tokens == len(PROMPT)
    return [t for o in outs for t in o.new_token_ids], outs[-1].num_output_tokens


@pytest.mark.parametrize("case", CASES)
def test_resume_on_the_real_engine_continues_the_uncut_run(engine: LLMEngine, case: str) -> None:
    params = CASES[case]
    full, n = _run(engine, f"{case}-full", params, [])
    assert n == len(full) == 16
    for cut in (1, 7):
        rest, n = _run(engine, f"{case}-{cut}", params, full[:cut])
        assert rest == full[cut:] and n == 16, cut
    if case == "greedy-penalties":
        # The same ids as part of the prompt instead (not penalized): a different continuation, so the
        # equality above really depends on the resumed ids counting as output.
        engine.add_request(
            "as-prompt",
            PROMPT + full[:7],
            SamplingParams(
                max_tokens=9, temperature=0.0, ignore_eos=True, frequency_penalty=2.0, presence_penalty=2.0
            ),
        )
        as_prompt = [t for o in engine.run_until_done() for t in o.new_token_ids]
        assert as_prompt != full[7:]
