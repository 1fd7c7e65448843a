"""The engine serves images (issue #29 part 2b): the offline engine on the tiny random-weight Qwen2.5-VL
checkpoint against transformers' Qwen2_5_VLForConditionalGeneration (greedy tokens identical):
- one image, two images of different sizes, beside a text-only request in the same steps;
- chunked prefill whose chunks cut through the placeholder runs (the tower's rows are held across chunks);
- preemption by recompute with images (the embeddings come back from the LRU or the tower);
- speculative decoding (drafts of a request with images rotate by i + rope delta);
- tensor parallelism (TP=2: the tower runs replicated on every rank);
- prefix cache: the same image reuses its blocks (cached tokens > 0, same tokens as uncached); a different
  image of the same size does not (its tokens are transformers' for that image, and differ).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from paddlellm.engine.core import LLMEngine
from paddlellm.errors import InvalidRequest
from paddlellm.llm import LLM
from paddlellm.sampling import SamplingParams
from paddlellm.vision.image_config import ImageProcessorConfig
from paddlellm.vision.image_inputs import ImageInputs
from paddlellm.vision.qwen2_vl_processor import ProcessedImage, preprocess_image
from tests.parity.test_qwen2_5_vl_parity import CASES, ONE, hf, images, prompt, vl_path  # noqa: F401

torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)

pytestmark = pytest.mark.parity
MAX_NEW = 12
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
TEXT = [1, 2, 3, 4, 5, 6, 7, 8, 9]


def hf_greedy(hf, ids: list[int], imgs: list[ProcessedImage], image_token_id: int) -> list[int]:  # noqa: F811
    t = torch.tensor([ids])
    kw = {}
    if imgs:
        kw = dict(
            pixel_values=torch.from_numpy(np.concatenate([im.pixel_values for im in imgs])),
            image_grid_thw=torch.tensor([im.grid_thw for im in imgs]),
            mm_token_type_ids=(t == image_token_id).int(),
        )
    with torch.no_grad():
        out = hf.generate(
            input_ids=t, **kw, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def image_token_id(vl_path) -> int:  # noqa: F811
    from paddlellm.vision.vl_config import VLConfig

    return VLConfig.from_dir(vl_path).image_token_id


@pytest.fixture(scope="module")
def cases(vl_path, hf, images, image_token_id):  # noqa: F811
    """case -> (prompt ids, ImageInputs, transformers' greedy tokens)."""
    out = {}
    for name in ("one-image", "two-images"):
        parts, which = CASES[name]
        imgs = [images[i] for i in which]
        ids = prompt(vl_path, image_token_id, parts, imgs)
        out[name] = (ids, ImageInputs.from_processed(imgs), hf_greedy(hf, ids, imgs, image_token_id))
    out["text"] = (TEXT, None, hf_greedy(hf, TEXT, [], image_token_id))
    return out


def _run(llm: LLM, cases: dict, names: list[str]) -> None:
    outs = llm.generate([cases[n][0] for n in names], GREEDY, images=[cases[n][1] for n in names])
    for name, out in zip(names, outs, strict=True):
        assert list(out.token_ids) == cases[name][2], name


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"max_num_batched_tokens": 7, "max_num_seqs": 3},  # 7-token chunks cut through the image runs
        # preemption by recompute: 3 one-image requests take 2 blocks each, then need a third
        dict(num_gpu_blocks_override=6, kv_cache_ratio=1.0, enable_prefix_caching=False, block_size=16),
        {"speculative_config": '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1}'},
        {"tensor_parallel_size": 2, "num_threads": 1},  # every rank runs the tower on the same inputs
    ],
    ids=["batch", "chunked", "preempted", "speculative", "tp2"],
)
def test_engine_greedy_tokens_match_transformers(vl_path, cases, overrides) -> None:  # noqa: F811
    cfg = {"max_model_len": 1024, "enable_mm": True, "num_threads": 2, **overrides}
    preempt = "num_gpu_blocks_override" in overrides
    names = ["one-image"] * 3 + ["text"] if preempt else ["one-image", "two-images", "text"]
    with LLM(vl_path, **cfg) as llm:
        _run(llm, cases, names)
        if preempt:
            assert llm.engine.stats().num_preemptions > 0
        runner = getattr(llm.engine.executor, "runner", None)  # in-process (TP=1)
        if runner is not None:  # every image's rows were let go once its run was computed
            assert runner.images is not None and all(not h for h in runner.images._held.values())


def _serve(engine: LLMEngine, rid: str, ids: list[int], imgs: ImageInputs) -> tuple[list[int], int]:
    engine.add_request(rid, ids, GREEDY, images=imgs)
    tokens, cached = [], -1
    for out in engine.run_until_done():
        tokens.extend(out.new_token_ids)
        cached = out.num_cached_tokens
    return tokens, cached


def test_prefix_cache_keys_images_by_content(vl_path, hf, images, image_token_id, cases) -> None:  # noqa: F811
    ids, imgs, ref = cases["one-image"]
    rng = np.random.default_rng(7)
    cfg = ImageProcessorConfig.from_dir(vl_path)
    other = preprocess_image(Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)), cfg)
    assert other.grid_thw == images[0].grid_thw  # same size: same placeholder ids, only the pixels differ
    other_ref = hf_greedy(hf, ids, [other], image_token_id)
    assert other_ref != ref  # the images matter to the model
    first = ids.index(image_token_id)
    with LLM(vl_path, max_model_len=1024, enable_mm=True, num_threads=2, block_size=16) as llm:
        engine, tower = llm.engine, llm.engine.executor.runner.images
        assert _serve(engine, "a", ids, imgs) == (ref, 0)
        # a different image of the same size: only the text blocks before it are reused
        got, cached = _serve(engine, "b", ids, ImageInputs.from_processed([other]))
        assert got == other_ref and cached == first // 16 * 16
        # the same image again, and a follow-up turn: its blocks are reused, the tokens are unchanged
        encoded = tower.tower_images
        got, cached = _serve(engine, "c", ids, imgs)
        assert got == ref and cached == (len(ids) - 1) // 16 * 16 > first
        follow = ids + ref + [5, 6, 7]
        got, cached = _serve(engine, "d", follow, imgs)
        assert cached >= (len(ids) - 1) // 16 * 16
        assert got == hf_greedy(hf, follow, [images[0]], image_token_id)
        assert tower.tower_images == encoded  # nothing past the cached blocks needed the image's rows


def test_images_are_checked_at_add(vl_path, cases, image_token_id) -> None:  # noqa: F811
    ids, imgs, _ = cases["one-image"]
    with LLM(vl_path, max_model_len=1024, enable_mm=True, num_threads=2) as llm:
        with pytest.raises(InvalidRequest, match="placeholder"):
            llm.generate([ids[:-3] + [image_token_id] * 3], GREEDY, images=[imgs])  # one placeholder too many
        with pytest.raises(InvalidRequest, match="placeholder"):
            llm.generate([TEXT], GREEDY, images=[imgs])
    with LLM(vl_path, max_model_len=1024, num_threads=2) as llm:  # enable_mm off
        with pytest.raises(InvalidRequest, match="enable_mm") as e:
            llm.generate([ids], GREEDY, images=[imgs])
        assert e.value.param == "messages"


@pytest.mark.parametrize("case", ["one-image", "two-images"])
def test_prompt_logprobs_match_transformers(vl_path, hf, images, cases, case) -> None:  # noqa: F811
    """Every prompt position through the engine (prompt_logprobs: the whole prompt is computed, in 64-token
    chunks here, so the long image run is cut): log-softmax within 1e-3 of transformers' forward."""
    ids, imgs, _ = cases[case]
    which = CASES[case][1]
    t = torch.tensor([ids])
    with torch.no_grad():
        logits = hf(
            input_ids=t,
            pixel_values=torch.from_numpy(imgs.pixel_values),
            image_grid_thw=torch.tensor([images[i].grid_thw for i in which]),
            mm_token_type_ids=(t == hf.config.image_token_id).int(),
        ).logits[0]
    ref = torch.log_softmax(logits, dim=-1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    cfg = dict(max_model_len=1024, enable_mm=True, num_threads=2, max_num_batched_tokens=64)
    with LLM(vl_path, **cfg) as llm:
        [out] = llm.generate([ids], params, images=[imgs])
    got = np.array([lp.logprob for lp in out.prompt_logprobs[1:]])
    diff = np.abs(got - ref).max()
    assert diff <= 1e-3, f"{case}: max abs prompt logprob diff {diff}"
    print(f"{case}: {len(ids)} prompt tokens, max abs logprob diff {diff:.2e}")
