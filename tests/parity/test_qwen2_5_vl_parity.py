"""Qwen2.5-VL against transformers on a tiny random-weight checkpoint (scripts/make_tiny_vl_model.py).

(a) vision tower embeddings vs `model.visual` for one image and for two images of different sizes in one
call (several attention windows, edge windows, full-attention layers): max abs diff <= 1e-4 (measured ~3e-6);
(b) M-RoPE positions and rope delta equal `get_rope_index` for prompts with 1 and 2 images;
(c) a whole prefill (image embeddings at the placeholder rows, M-RoPE) through the project's decoder: prompt
logits within 1e-3 of transformers' (the text models' tolerance; measured ~4e-5) and 16 greedy tokens, decoded
at positions shifted by the rope delta, identical to `generate`, on every kernel choice.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from paddlellm.config import EngineConfig
from paddlellm.cpu import read_cpu
from paddlellm.layers.host_tensor import StepTensors
from paddlellm.layers.kernels import select_kernels
from paddlellm.models.qwen2_5_vl import Qwen2_5_VLModel
from paddlellm.vision.image_config import ImageProcessorConfig
from paddlellm.vision.placeholders import expand_image_placeholders
from paddlellm.vision.qwen2_vl_processor import ProcessedImage, preprocess_image
from tests.kernel_choices import model_kernels

torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)
tokenizers = pytest.importorskip("tokenizers", exc_type=ModuleNotFoundError)

pytestmark = pytest.mark.parity
SIZES = [(80, 100), (200, 64), (390, 500)]  # (height, width): 12, 14 and 252 image tokens
ONE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def vl_path(tmp_path_factory, default_model_dir) -> str:
    from scripts.make_tiny_vl_model import make_tiny_vl_model

    return make_tiny_vl_model(str(tmp_path_factory.mktemp("tiny_vl") / "qwen2_5_vl"), default_model_dir)


@pytest.fixture(scope="module")
def hf(vl_path):
    return transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        vl_path, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def images(vl_path) -> list[ProcessedImage]:
    cfg = ImageProcessorConfig.from_dir(vl_path)
    rng = np.random.default_rng(0)
    return [
        preprocess_image(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), cfg)
        for h, w in SIZES
    ]


def prompt(path: str, image_token_id: int, parts: list[str], imgs: list[ProcessedImage]) -> list[int]:
    """A chat prompt with the images' placeholders expanded, as the tokenizer model will build it."""
    tok = tokenizers.Tokenizer.from_file(f"{path}/tokenizer.json")
    text = f"<|im_start|>user\n{''.join(parts)}<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(text, add_special_tokens=False).ids
    return expand_image_placeholders(ids, image_token_id, [im.num_tokens for im in imgs])


@pytest.mark.parametrize("which", [[0], [2], [1, 0], [0, 1, 2]], ids=["one", "large", "two", "three"])
def test_vision_tower_matches(vl_path, hf, images, which) -> None:
    model = Qwen2_5_VLModel(vl_path)
    pv = np.concatenate([images[i].pixel_values for i in which])
    grids = [images[i].grid_thw for i in which]
    got = model.vision(pv, grids).numpy()
    with torch.no_grad():
        ref = hf.model.visual(torch.from_numpy(pv), grid_thw=torch.tensor(grids)).pooler_output.numpy()
    assert got.shape == ref.shape == (sum(images[i].num_tokens for i in which), 64)
    diff = np.abs(got - ref).max()
    assert diff <= 1e-4, f"vision embeddings: max abs diff {diff}"
    # the runner's reusable step buffers instead of fresh tensors: the same numbers
    assert np.array_equal(model.vision(pv, grids, tensor=StepTensors(on_cpu=True)).numpy(), got)
    # one call for several images equals one call per image
    parts = model.vision.split(model.vision(pv, grids), grids)
    for i, part in zip(which, parts, strict=True):
        alone = model.vision(images[i].pixel_values, [images[i].grid_thw]).numpy()
        assert np.abs(part.numpy() - alone).max() <= 1e-5


CASES = {
    "one-image": ([ONE, "What is in the picture?"], [0]),
    "two-images": (["Compare ", ONE, " with", ONE, "please."], [1, 2]),
    "image-first-text-only-after": ([ONE], [2]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mrope_positions_match_get_rope_index(vl_path, hf, images, case) -> None:
    parts, which = CASES[case]
    model = Qwen2_5_VLModel(vl_path)
    imgs = [images[i] for i in which]
    ids = prompt(vl_path, model.config.image_token_id, parts, imgs)
    grids = [im.grid_thw for im in imgs]
    t = torch.tensor([ids])
    ref_pos, ref_delta = hf.model.get_rope_index(
        t, (t == model.config.image_token_id).int(), image_grid_thw=torch.tensor(grids)
    )
    got = model.positions(ids, grids)
    assert np.array_equal(got.positions, ref_pos[:, 0].numpy())
    assert got.delta == int(ref_delta[0, 0])


# native kernels take [T, d] rotary rows, Paddle's ops the expanded [T, heads, d] ones: both M-RoPE layouts
@pytest.mark.parametrize("kernels", [*model_kernels(), "paddle"])
@pytest.mark.parametrize("case", ["one-image", "two-images"])
def test_prefill_logits_and_greedy_match(vl_path, hf, images, case, kernels) -> None:
    parts, which = CASES[case]
    cfg = EngineConfig(
        model=vl_path, max_model_len=1024, num_threads=2, cpu_kernels=kernels, quantization="none"
    )
    model = Qwen2_5_VLModel(vl_path, select_kernels(cfg, read_cpu()))
    imgs = [images[i] for i in which]
    ids = prompt(vl_path, model.config.image_token_id, parts, imgs)
    grids = [im.grid_thw for im in imgs]
    pv = np.concatenate([im.pixel_values for im in imgs])
    logits, greedy = model.generate_greedy(ids, pv, grids, 16)
    t = torch.tensor([ids])
    inputs = dict(
        input_ids=t,
        pixel_values=torch.from_numpy(pv),
        image_grid_thw=torch.tensor(grids),
        mm_token_type_ids=(t == model.config.image_token_id).int(),
    )
    with torch.no_grad():
        ref = hf(**inputs).logits[0].numpy()
        gen = hf.generate(
            **inputs, max_new_tokens=16, min_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    diff = np.abs(logits - ref).max()
    assert diff <= 1e-3, f"{case}: max abs logit diff {diff}"
    assert greedy == gen[0, len(ids) :].tolist()
    # chunked prefill: chunks of 7 tokens cut through the images' placeholder runs
    chunked_logits, chunked = model.generate_greedy(ids, pv, grids, 16, chunk=7)
    assert np.abs(chunked_logits - ref).max() <= 1e-3
    assert chunked == greedy


def test_text_only_prompt_is_plain_qwen2(vl_path, hf) -> None:
    """Without images M-RoPE is 1-D RoPE: the text decoder alone matches transformers."""
    model = Qwen2_5_VLModel(vl_path)
    ids = prompt(vl_path, model.config.image_token_id, ["Hello there, how are you?"], [])
    pos = model.positions(ids, [])
    assert pos.delta == 0 and np.array_equal(pos.positions, np.tile(np.arange(len(ids)), (3, 1)))
    logits, greedy = model.generate_greedy(ids, None, [], 8)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(logits - ref).max() <= 1e-3


def test_chat_template_renders_image_parts(vl_path) -> None:
    """The tiny checkpoint's template, in the project's sandbox, renders as transformers does, and the vision
    markers tokenize to single ids."""
    from paddlellm.text.chat_template import ChatTemplate

    tok = transformers.AutoTokenizer.from_pretrained(vl_path)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "What is this?"},
                {"type": "image"},
            ],
        }
    ]
    ours = ChatTemplate.compile(tok.chat_template).template.render(
        messages=messages, add_generation_prompt=True
    )
    assert ours == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.count(ONE) == 2
    ids = (
        tokenizers.Tokenizer.from_file(f"{vl_path}/tokenizer.json").encode(ours, add_special_tokens=False).ids
    )
    model_cfg = Qwen2_5_VLModel(vl_path).config
    assert ids.count(model_cfg.image_token_id) == 2
    assert ids.count(model_cfg.vision_start_token_id) == ids.count(model_cfg.vision_end_token_id) == 2
