"""GGUF blocks kept as they are: Q8_0 / Q4_0 / Q4_1 parsed from a file's bytes equal gguf's own
dequantization, and the converter keeps them beside the fp32 weights."""

from __future__ import annotations

import numpy as np
import pytest

from paddlellm.quant_blocks import BLOCK, BlockQuantized, BlockStore, read_gguf_blocks

gguf = pytest.importorskip("gguf", exc_type=ModuleNotFoundError)
from gguf.quants import dequantize  # noqa: E402

TYPES = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
         "q4_1": gguf.GGMLQuantizationType.Q4_1}
BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}


def _random_tensor(kind: str, rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kb = cols // BLOCK
    raw = rng.integers(0, 256, (rows, kb, BYTES[kind]), dtype=np.uint8)
    scales = (rng.standard_normal((rows, kb, 2)) * 0.01).astype(np.float16)  # finite d (and m)
    raw[:, :, 0:2] = scales[:, :, 0:1].view(np.uint8)
    if kind == "q4_1":
        raw[:, :, 2:4] = scales[:, :, 1:2].view(np.uint8)
    return raw.reshape(rows, kb * BYTES[kind])


@pytest.mark.parametrize("kind", list(TYPES))
def test_parsed_blocks_dequantize_exactly_as_gguf_does(kind: str) -> None:
    data = _random_tensor(kind, rows=6, cols=96, seed=len(kind))
    blocks = read_gguf_blocks(kind, data, 6, 96)
    want = np.asarray(dequantize(data, TYPES[kind]), dtype=np.float32).reshape(6, 96)
    np.testing.assert_array_equal(blocks.dequantize(), want)
    assert blocks.q.shape == (6, 96) and blocks.d.shape == (6, 3)
    if kind == "q8_0":
        assert blocks.q.dtype == np.int8 and blocks.m is None
    else:
        assert blocks.q.max() <= 15 and blocks.m is not None


def test_slicing_and_fusing_keep_blocks_whole() -> None:
    blocks = read_gguf_blocks("q4_1", _random_tensor("q4_1", 8, 64, seed=3), 8, 64)
    full = blocks.dequantize()
    np.testing.assert_array_equal(blocks.rows(2, 5).dequantize(), full[2:5])
    np.testing.assert_array_equal(blocks.cols(32, 64).dequantize(), full[:, 32:])  # type: ignore[union-attr]
    assert blocks.cols(16, 48) is None  # not on block boundaries: the caller quantizes fp32 instead
    fused = BlockQuantized.concat([blocks.rows(0, 3), blocks.rows(3, 8)])
    np.testing.assert_array_equal(fused.dequantize(), full)  # type: ignore[union-attr]
    q8 = read_gguf_blocks("q8_0", _random_tensor("q8_0", 2, 32, seed=4), 2, 32)
    assert BlockQuantized.concat([blocks.rows(0, 2), q8]) is None  # kinds differ
    np.testing.assert_array_equal(blocks.scaled(np.float32(0.125)).dequantize(), full * np.float32(0.125))


def test_the_default_model_keeps_its_gguf_blocks(default_model_dir: str) -> None:
    """Every linear weight of the default model is Q4_1 and its tied embedding Q8_0, kept beside the fp32
    copy, which is exactly their dequantization."""
    from paddlellm.weight_reader import WeightReader

    store, reader = BlockStore(default_model_dir), WeightReader(default_model_dir)
    kinds = set(store.kinds.values())
    assert kinds == {"q4_1", "q8_0"} and store.kinds["model.embed_tokens.weight"] == "q8_0"
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.7.self_attn.k_proj.weight",
                 "model.layers.29.mlp.down_proj.weight", "model.embed_tokens.weight"):
        np.testing.assert_array_equal(store.get(name).dequantize(), reader.get(name))  # type: ignore[union-attr]
