"""Mistral's sliding window at the boundary the registry allows: a window equal to max_model_len runs full
attention and matches transformers (which applies the window) token for token; a shorter window changes
transformers' logits, which is why ModelInfo refuses it. (The plain logits and greedy parity of the tiny
Mistral checkpoint run with every architecture in test_tiny_models.py.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from paddlellm.config import EngineConfig  # noqa: E402
from paddlellm.errors import ConfigError  # noqa: E402
from paddlellm.model_info import ModelInfo  # noqa: E402
from paddlellm.sampling import SamplingParams  # noqa: E402
from paddlellm.worker.model_runner import ModelRunner  # noqa: E402
from tests.parity.driver import run_requests  # noqa: E402
from tests.parity.test_tiny_models import hf_greedy, hf_logits, hf_model, prompts  # noqa: E402

pytestmark = pytest.mark.parity
WINDOW = 64


def _with_window(src: str, dst: str, window: int) -> str:
    shutil.copytree(src, dst)
    with open(f"{dst}/config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["sliding_window"] = window
    with open(f"{dst}/config.json", "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return dst


def test_window_equal_to_max_model_len_matches_transformers(tiny_checkpoint, tmp_path) -> None:
    src = tiny_checkpoint(arch="mistral", tokenizer="llama2", tie=False)
    path = _with_window(src, str(tmp_path / "w"), WINDOW)
    info = ModelInfo.from_dir(path, max_model_len=WINDOW)
    cfg = EngineConfig(model=path, block_size=16, max_model_len=WINDOW, num_threads=2)
    runner = ModelRunner(cfg, info, num_blocks=64)
    model = hf_model(path)
    assert model.config.sliding_window == WINDOW
    ps = prompts(info.vocab_size, [40, 7, 33], seed=12)
    n = WINDOW - 40  # the longest request fills the window exactly
    expected = [hf_greedy(model, p, n) for p in ps]
    greedy = SamplingParams(temperature=0.0, max_tokens=n)
    assert run_requests(runner, ps, greedy, token_budget=24, arrive_every=1) == expected
    full = ps[0] + expected[0]
    assert len(full) == WINDOW
    assert np.abs(runner.prompt_logits(full) - hf_logits(model, full)).max() <= 1e-3

    with pytest.raises(ConfigError, match=rf"sliding_window.*{WINDOW} < max_model_len {WINDOW + 1}"):
        ModelInfo.from_dir(path, max_model_len=WINDOW + 1)
    # what the refusal protects: with a shorter window transformers' logits differ from full attention
    short = _with_window(path, str(tmp_path / "short"), WINDOW // 4)
    diff = np.abs(hf_logits(hf_model(short), full) - hf_logits(model, full)).max()
    assert diff > 1e-2
