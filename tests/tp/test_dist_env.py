"""dist_env: the divisibility check's messages and the per-rank environment (pure functions)."""

from __future__ import annotations

import json

import pytest

from paddlellm.errors import ConfigError
from paddlellm.executor.dist_env import check_tp_divisible, rank_env
from paddlellm.model_info import ModelInfo
from paddlellm.ports import free_endpoints


def _info(tmp_path, heads: int, kv: int, inter: int) -> ModelInfo:
    cfg = {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 100, "hidden_size": 16 * heads,
           "head_dim": 16, "intermediate_size": inter, "num_hidden_layers": 1, "num_attention_heads": heads,
           "num_key_value_heads": kv}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return ModelInfo.from_dir(str(tmp_path))


def test_divisibility(tmp_path) -> None:
    info = _info(tmp_path, 16, 4, 96)
    for tp in (1, 2, 4):
        check_tp_divisible(info, tp)
    with pytest.raises(ConfigError, match=r"8 does not divide .*num_key_value_heads=4.*model: 1, 2, 4$"):
        check_tp_divisible(info, 8)
    with pytest.raises(ConfigError, match="intermediate_size"):
        check_tp_divisible(_info(tmp_path, 16, 4, 90), 4)


def test_rank_env() -> None:
    eps = free_endpoints(2)
    assert len(set(eps)) == 2 and all(e.startswith("127.0.0.1:") for e in eps)
    cpu = rank_env(1, 2, [], "cpu")
    assert cpu["PADDLE_TRAINER_ID"] == "1" and cpu["PADDLE_TRAINERS_NUM"] == "2"
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and "PADDLE_TRAINER_ENDPOINTS" not in cpu
    assert "OMP_NUM_THREADS" not in cpu  # paddle warns about it; threads are set through paddle instead
    gpu = rank_env(1, 2, eps, "gpu")
    assert gpu["PADDLE_CURRENT_ENDPOINT"] == eps[1] and gpu["PADDLE_TRAINER_ENDPOINTS"] == ",".join(eps)
    assert gpu["FLAGS_selected_gpus"] == "1" and gpu["PADDLE_DISTRI_BACKEND"] == "nccl"
