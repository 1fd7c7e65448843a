"""The offline LLM entry and the engine loop thread over real checkpoints."""

import threading

import pytest

from paddlellm.engine.loop import EngineLoop
from paddlellm.sampling import SamplingParams

pytest.importorskip("paddle", exc_type=ModuleNotFoundError)

from paddlellm.config import EngineConfig
from paddlellm.llm import LLM  # noqa: E402
from tests.kernel_choices import model_kernels  # noqa: E402

CAPITALS = (
    "Paris",
    "Berlin",
    "Madrid",
    "Rome",
    "Tokyo",
    "Beijing",
    "Moscow",
    "London",
    "Delhi",
    "Ottawa",
    "Washington",
    "Canberra",
    "Brasília",
    "Brasilia",
)


def test_default_model_answers_the_seed_question(default_model_dir):
    with LLM(default_model_dir, num_threads=2) as llm:
        (c,) = llm.chat(
            [[{"role": "user", "content": "List 3 countries and their capitals."}]],
            SamplingParams(max_tokens=96, temperature=0.0),
        )
    assert c.finish_reason == "stop" and len(c.token_ids) > 10
    assert sum(city in c.text for city in CAPITALS) >= 2, c.text
    assert c.prompt_token_ids[-1] != c.token_ids[0]


def test_text_and_ids_agree_and_loop_matches_offline(tiny_checkpoint):
    path = tiny_checkpoint(arch="qwen2", tokenizer="llama2", seed=3)
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    with LLM(path, num_threads=2, max_model_len=512, num_gpu_blocks_override=64, block_size=16) as llm:
        prompts = ["Hello world", "你好，世界 🙂", "The quick brown fox jumps over the lazy dog " * 4]
        by_text = llm.generate(prompts, greedy)
        by_ids = llm.generate([list(c.prompt_token_ids) for c in by_text], greedy)
        assert [c.token_ids for c in by_text] == [c.token_ids for c in by_ids]
        for c in by_text:
            assert c.text == llm.tokenizer.decode(c.token_ids) and len(c.token_ids) == 12

        # The same requests through the loop thread, added from several threads at once.
        loop = EngineLoop(llm.engine).start()
        got: dict[str, list[int]] = {}
        done = threading.Event()
        lock = threading.Lock()

        finished: dict[str, str | None] = {}

        def sink(out):
            with lock:
                got.setdefault(out.request_id, []).extend(out.new_token_ids)
                if out.finished:
                    finished[out.request_id] = out.finish_reason
                    if len(finished) == len(prompts):
                        done.set()

        threads = [
            threading.Thread(target=loop.add, args=(f"t{i}", c.prompt_token_ids, greedy, sink))
            for i, c in enumerate(by_text)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert done.wait(120)
        finally:
            loop.stop(shutdown_engine=False)
        assert set(finished.values()) == {"length"}
        assert [got[f"t{i}"] for i in range(len(prompts))] == [list(c.token_ids) for c in by_text]
        assert llm.engine.stats().num_free_blocks == 64


def test_bfloat16_weights_answer_the_seed_question_like_float32(default_model_dir):
    """--dtype bfloat16 (native kernels, best ISA): the default model still answers the seed question, and
    its first greedy tokens match float32's (bf16 rounding may move a later near-tie, so not all of them)."""
    greedy = SamplingParams(max_tokens=96, temperature=0.0)
    seed = [[{"role": "user", "content": "List 3 countries and their capitals."}]]
    answers = {}
    for dtype in ("float32", "bfloat16"):
        # quantization none: float32 is the exact reference, not the stored blocks auto would run
        with LLM(default_model_dir, num_threads=2, dtype=dtype, quantization="none") as llm:
            want = "packed-bf16" if dtype == "bfloat16" else "packed-fp32"
            assert llm.engine.executor.runner.kernels.gemm.name.startswith(want)
            (answers[dtype],) = llm.chat(seed, greedy)
    bf16 = answers["bfloat16"]
    assert sum(city in bf16.text for city in CAPITALS) >= 2, bf16.text
    assert bf16.token_ids[:8] == answers["float32"].token_ids[:8]


def test_paddle_ops_and_native_kernels_give_the_same_greedy_tokens(default_model_dir):
    """The fallback path (--cpu-kernels paddle: GPU, CPUs with no native ISA) and every kernel choice the
    tests run (best ISA, AVX2 forced) give the same greedy tokens with the float32 KV cache the Paddle path
    keeps. On their default float16 cache the ISAs' last-bit differences (summation orders) can round to
    different fp16 values and move a later near-tie: there each run keeps its ISA's float32 start."""
    greedy = SamplingParams(max_tokens=40, temperature=0.0)
    questions = ("List 3 countries and their capitals.", "写一首关于春天的诗")
    chats = [[{"role": "user", "content": q}] for q in questions]
    tokens = {}
    runs = [("paddle", "auto")] + [(k, kv) for k in model_kernels() for kv in ("float32", "auto")]
    for kernels, kv in runs:
        with LLM(default_model_dir, num_threads=2, cpu_kernels=kernels, kv_cache_dtype=kv) as llm:
            tokens[kernels, kv] = [c.token_ids for c in llm.chat(chats, greedy)]
    exact = [t for (_, kv), t in tokens.items() if kv == "float32"]
    assert all(t == tokens["paddle", "auto"] for t in exact), list(tokens)
    for k in model_kernels():
        for fp16, fp32 in zip(tokens[k, "auto"], tokens[k, "float32"], strict=True):
            assert fp16[:16] == fp32[:16], k


def _weights_as_stored(model: object) -> dict[tuple[str, bool], int]:
    """(weight class, runs the GGUF's blocks as stored) -> count, over every quantized weight of `model`."""
    counts: dict[tuple[str, bool], int] = {}
    seen: set[int] = set()

    def walk(obj: object, depth: int) -> None:
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if hasattr(obj, "as_stored"):
            key = (type(obj).__name__, bool(obj.as_stored))
            counts[key] = counts.get(key, 0) + 1
            return
        for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
            for item in value if isinstance(value, (list, tuple)) else (value,):
                walk(item, depth + 1)

    walk(model, 0)
    return counts


@pytest.mark.parametrize("quantization", ["wint8", "wint4"])
def test_quantized_weights_answer_the_seed_question_with_every_kernel_isa(default_model_dir, quantization):
    """--quantization wint8 / wint4: the default model still answers the seed question with every kernel ISA
    the tests run. The quantized GEMMs give the same bits on every ISA (tests/unit/test_quant_gemm.py), but
    attention's exp and the norms differ in the last bits between ISAs, and quantizing activations to int8
    can turn such a difference into another rounding step: the answers agree on a prefix, not whole."""
    greedy = SamplingParams(max_tokens=96, temperature=0.0)
    seed = [[{"role": "user", "content": "List 3 countries and their capitals."}]]
    tokens = {}
    for kernels in model_kernels():
        with LLM(default_model_dir, num_threads=2, quantization=quantization, cpu_kernels=kernels) as llm:
            assert llm.engine.executor.runner.kernels.gemm.name.startswith(f"packed-{quantization}")
            stored = _weights_as_stored(llm.engine.executor.runner.model)
            if quantization == "wint4":  # the GGUF's Q4_1 layers and Q8_0 head, no second rounding
                assert stored == {("_Int4Weight", True): 150, ("_Int8Weight", True): 1}, stored
            else:  # only the Q8_0 head is in wint8's format; the Q4_1 layers are re-quantized to 8 bits
                assert stored == {("_Int8Weight", False): 150, ("_Int8Weight", True): 1}, stored
            (answer,) = llm.chat(seed, greedy)
        assert answer.finish_reason == "stop", answer.text
        assert sum(city in answer.text for city in CAPITALS) >= 2, answer.text
        tokens[kernels] = answer.token_ids
    first = next(iter(tokens.values()))
    assert all(t[:12] == first[:12] for t in tokens.values()), tokens


def test_quantization_auto_runs_what_the_gguf_stored(default_model_dir, tiny_checkpoint):
    """--quantization auto, the default: the default model (a Q4_1 GGUF) runs as wint4 on its own blocks; a
    checkpoint with full-precision weights only stays unquantized (transformers-exact); an explicit
    --dtype bfloat16 wins over the stored blocks; --quantization none keeps the exact fp32 path reachable."""
    assert EngineConfig(model=default_model_dir).quantization == "auto"
    with LLM(default_model_dir, num_threads=2) as llm:
        runner = llm.engine.executor.runner
        assert runner.config.quantization == "wint4" and runner.kernels.gemm.name.startswith("packed-wint4")
    with LLM(tiny_checkpoint(arch="llama"), num_threads=2) as llm:
        assert llm.engine.executor.runner.config.quantization == "none"
    with LLM(default_model_dir, num_threads=2, dtype="bfloat16") as llm:
        assert llm.engine.executor.runner.config.quantization == "none"
    with LLM(default_model_dir, num_threads=2, quantization="none") as llm:
        assert llm.engine.executor.runner.kernels.gemm.name.startswith("packed-fp32")
