"""ModelRunner edges: bf16 checkpoints, tensor-parallel divisibility, warmup, state bookkeeping, sampled
requests under batching and chunking."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ModuleNotFoundError)
transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)

from paddlellm.errors import ConfigError  # noqa: E402
from paddlellm.layers.linear import Shard  # noqa: E402
from paddlellm.model_info import ModelInfo  # noqa: E402
from paddlellm.models.decoder import DecoderModel  # noqa: E402
from paddlellm.sampling import SamplingParams  # noqa: E402
from paddlellm.weight_reader import WeightReader  # noqa: E402
from tests.kernel_choices import model_kernels  # noqa: E402
from tests.parity.driver import run_requests  # noqa: E402
from tests.parity.test_tiny_models import hf_logits, make_runner, prompts  # noqa: E402

pytestmark = pytest.mark.parity


def test_bf16_checkpoint_loads_exactly(tiny_checkpoint, tmp_path) -> None:
    src = tiny_checkpoint(arch="qwen2", tokenizer="llama2", tie=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    out = str(tmp_path / "bf16")
    model.save_pretrained(out, safe_serialization=True)
    reader = WeightReader(out)
    name = "model.layers.0.mlp.down_proj.weight"
    assert np.array_equal(reader.get(name), model.state_dict()[name].float().numpy())
    assert np.array_equal(
        reader.get(name, rows=(3, 9), cols=(5, 20)), model.state_dict()[name].float().numpy()[3:9, 5:20]
    )
    runner = make_runner(out)
    ids = prompts(runner.info.vocab_size, [30], seed=9)[0]
    reference = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert np.abs(runner.prompt_logits(ids) - hf_logits(reference, ids)).max() <= 1e-3


def test_heads_not_divisible_by_world_is_a_clear_error(tiny_checkpoint) -> None:
    path = tiny_checkpoint(arch="llama", tokenizer="llama2")
    info = ModelInfo.from_dir(path)  # 4 heads, 2 kv heads
    with pytest.raises(ConfigError, match="tensor_parallel_size=3"):
        DecoderModel(info, WeightReader(path), Shard(0, 3), all_reduce=lambda x: x)


def test_warmup_leaves_no_state_and_changes_nothing(tiny_checkpoint) -> None:
    path = tiny_checkpoint(arch="llama", tokenizer="llama2")
    runner = make_runner(path, block_size=16, num_blocks=64)
    ps = prompts(runner.info.vocab_size, [9, 20], seed=10)
    params = SamplingParams(temperature=0.0, max_tokens=8)
    before = run_requests(runner, ps, params)
    runner.warmup()
    assert not runner.requests
    assert run_requests(runner, ps, params) == before


@pytest.mark.parametrize("kernels", model_kernels())
def test_seeded_sampling_is_batch_and_chunk_invariant(tiny_checkpoint, kernels: str) -> None:
    path = tiny_checkpoint(arch="qwen3", tokenizer="llama2")
    runner = make_runner(path, block_size=8, num_blocks=512, cpu_kernels=kernels)
    ps = prompts(runner.info.vocab_size, [12 + 5 * i for i in range(12)], seed=11)
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=24)
    seeds = [100 + i for i in range(12)]
    alone = run_requests(runner, ps[3:4], params, seeds=seeds[3:4])
    together = run_requests(runner, ps, params, token_budget=40, arrive_every=1, seeds=seeds)
    assert together[3] == alone[0]
    assert len({tuple(t) for t in together}) > 1


def test_unsupported_config_features_fail_at_load(tiny_checkpoint, tmp_path) -> None:
    import json
    import shutil

    from paddlellm.errors import CheckpointError

    src = tiny_checkpoint(arch="llama", tokenizer="llama2")
    for field, value in (
        ("hidden_act", "gelu"),
        ("use_sliding_window", True),
        ("partial_rotary_factor", 0.5),
    ):
        out = tmp_path / field
        shutil.copytree(src, out)
        cfg = json.loads((out / "config.json").read_text())
        cfg[field] = value
        (out / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=field):
            DecoderModel(ModelInfo.from_dir(str(out)), WeightReader(str(out)), Shard(), None)
