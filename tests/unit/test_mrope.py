"""M-RoPE positions, rows, placeholder expansion and the Qwen2.5-VL config reader, without transformers
(their parity with transformers is tests/parity/test_qwen2_5_vl_parity.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from paddlellm.errors import CheckpointError, InvalidRequest
from paddlellm.layers.mrope import MRotaryRows
from paddlellm.layers.rotary import RotaryTables
from paddlellm.vision.mrope_positions import mrope_positions
from paddlellm.vision.placeholders import expand_image_placeholders
from paddlellm.vision.vl_config import VLConfig

IMG = 9


def test_positions_of_one_image_between_text() -> None:
    # 2 text tokens, a 2x3 merged grid (patch grid 4x6, merge 2), 2 text tokens
    ids = [1, 2] + [IMG] * 6 + [3, 4]
    pos = mrope_positions(ids, [(1, 4, 6)], IMG, 2)
    assert pos.positions[:, :2].tolist() == [[0, 1]] * 3
    assert pos.positions[0, 2:8].tolist() == [2] * 6
    assert pos.positions[1, 2:8].tolist() == [2, 2, 2, 3, 3, 3]
    assert pos.positions[2, 2:8].tolist() == [2, 3, 4, 2, 3, 4]
    assert pos.positions[:, 8:].tolist() == [[5, 6]] * 3  # cur advanced by max(2, 3)
    assert pos.delta == 7 - 10
    assert pos.decode_positions(10, 2).tolist() == [[7, 8]] * 3


def test_adjacent_images_each_take_their_grid() -> None:
    ids = [IMG] * 4 + [IMG] * 2
    pos = mrope_positions(ids, [(1, 4, 4), (1, 2, 4)], IMG, 2)
    assert pos.positions[2].tolist() == [0, 1, 0, 1, 2, 3]
    assert pos.positions[1].tolist() == [0, 0, 1, 1, 2, 2]


def test_text_only_is_one_dimensional() -> None:
    pos = mrope_positions([5, 6, 7], [], IMG, 2)
    assert pos.delta == 0 and pos.positions.tolist() == [[0, 1, 2]] * 3


@pytest.mark.parametrize(
    "ids, grids, match",
    [
        ([1, IMG, IMG, 2], [(1, 4, 4)], "needs 4 consecutive"),
        ([1, IMG], [], "more image placeholders"),
        ([1, 2], [(1, 2, 2)], "1 images given"),
        ([IMG], [(1, 3, 2)], "merge size"),
    ],
)
def test_mismatched_images_are_invalid_requests(ids, grids, match) -> None:
    with pytest.raises(InvalidRequest, match=match):
        mrope_positions(ids, grids, IMG, 2)


def test_rows_equal_1d_rows_when_axes_agree_and_mix_sections_otherwise() -> None:
    tables = RotaryTables(16, 10000.0, None, 64)
    rows = MRotaryRows(tables, (2, 3, 3))
    p = np.array([3, 7, 11, 20])
    cos, sin = rows.rows(np.stack([p, p, p]))
    ref_cos, ref_sin = tables.rows(p)
    assert np.array_equal(cos, ref_cos) and np.array_equal(sin, ref_sin)
    t, h, w = np.array([1]), np.array([5]), np.array([9])
    cos, _ = rows.rows(np.stack([t, h, w]))
    expect = [1, 1, 5, 5, 5, 9, 9, 9]  # position per frequency: sections 2, 3, 3
    assert np.array_equal(cos[0, :8], tables.cos[expect, np.arange(8)])
    assert np.array_equal(cos[0, 8:], cos[0, :8])
    ecos, esin = rows.expand(np.stack([t, h, w]), heads=3, passthrough=2)
    assert ecos.shape == (1, 5, 16) and np.array_equal(ecos[0, 2], cos[0]) and (ecos[0, 3:] == 1).all()
    assert (esin[0, 3:] == 0).all()
    with pytest.raises(ValueError):
        MRotaryRows(tables, (2, 3, 4))


def test_expand_placeholders() -> None:
    assert expand_image_placeholders([1, IMG, 2, IMG], IMG, [2, 3]) == [1, IMG, IMG, 2, IMG, IMG, IMG]
    with pytest.raises(InvalidRequest, match="2 images given"):
        expand_image_placeholders([1, IMG], IMG, [2, 3])
    with pytest.raises(InvalidRequest, match="more image placeholders"):
        expand_image_placeholders([IMG, IMG], IMG, [2])


TEXT = {
    "vocab_size": 100,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 256,
}
VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 56,
    "fullatt_block_indexes": [1],
}
IDS = {"image_token_id": 90, "vision_start_token_id": 91, "vision_end_token_id": 92}


def _write(tmp_path, cfg) -> str:
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


def test_flat_hub_and_nested_transformers5_configs_read_alike(tmp_path) -> None:
    flat = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        **TEXT,
        **IDS,
        "vision_config": VISION,
        "rope_theta": 1e6,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    }
    nested = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        **IDS,
        "vision_config": VISION,
        "text_config": {
            **TEXT,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        },
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = VLConfig.from_dir(_write(tmp_path / "a", flat)), VLConfig.from_dir(_write(tmp_path / "b", nested))
    assert a.vision == b.vision and a.mrope_section == b.mrope_section == (2, 3, 3)
    ia, ib = a.text_model_info(), b.text_model_info()
    assert (ia.hidden_size, ia.num_kv_heads, ia.head_dim, ia.rope_theta) == (64, 2, 16, 1e6)
    assert (ib.hidden_size, ib.num_kv_heads, ib.head_dim, ib.rope_theta) == (64, 2, 16, 1e6)
    assert ia.spec.model_type == "qwen2" and ia.attention_bias


def test_bad_mrope_section_names_the_field(tmp_path) -> None:
    cfg = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        **TEXT,
        **IDS,
        "vision_config": VISION,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 4, 4]},
    }
    with pytest.raises(CheckpointError, match="mrope_section"):
        VLConfig.from_dir(_write(tmp_path, cfg))


@pytest.mark.parametrize(
    "data, field",
    [
        ({"min_pixels": 100, "max_pixels": 50}, "min_pixels"),
        ({"image_std": [0.2, 0.0, 0.3]}, "image_std"),
        ({"image_mean": [0.5, "x", 0.5]}, "image_mean"),
        ({"patch_size": 14.5}, "patch_size"),
        ({"resample": 9}, "resample"),
        ({"do_resize": False}, "do_resize"),
    ],
)
def test_bad_preprocessor_config_names_the_field(data, field) -> None:
    from paddlellm.vision.image_config import ImageProcessorConfig

    with pytest.raises(CheckpointError, match=f"field '{field}'"):
        ImageProcessorConfig.from_dict(data)


def test_preprocessor_precedence_follows_transformers() -> None:
    from paddlellm.vision.image_config import ImageProcessorConfig

    both = {"min_pixels": 10, "max_pixels": 20, "size": {"shortest_edge": 1, "longest_edge": 2}}
    cfg = ImageProcessorConfig.from_dict(both)
    assert (cfg.min_pixels, cfg.max_pixels) == (10, 20)
    cfg = ImageProcessorConfig.from_dict({"size": {"shortest_edge": 1, "longest_edge": 2}})
    assert (cfg.min_pixels, cfg.max_pixels) == (1, 2)
    assert ImageProcessorConfig.from_dict({}) == ImageProcessorConfig()
