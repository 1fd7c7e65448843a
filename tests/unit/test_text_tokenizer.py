"""TextTokenizer encodes, decodes and renders chat prompts exactly as transformers' AutoTokenizer does."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from paddlellm.errors import CheckpointError, InvalidRequest
from paddlellm.model_info import CheckpointText
from paddlellm.text.tokenizer import TextTokenizer

transformers = pytest.importorskip("transformers", exc_type=ModuleNotFoundError)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "  two leading spaces\n\nand\ttabs   trailing ",
    "中文测试：你好，世界！",
    "Emoji 😀🎉👍🏽 👨‍👩‍👧 🇫🇷 and 𠀀",
    "Numbers 3.14159 and 2024-11-25; code: def f(x): return x**2",
    "<|im_start|>user\nhi<|im_end|>\n<s>[INST] x [/INST]</s>",
    "",
]
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "List 3 countries and their capitals."},
    {"role": "assistant", "content": "France: Paris"},
    {"role": "user", "content": "你好 😀"},
]


@pytest.fixture(scope="module", params=["smollm", "llama2"])
def tokenizer_dir(request: pytest.FixtureRequest) -> str:
    if request.param == "smollm":
        return request.getfixturevalue("default_model_dir")
    return os.path.dirname(
        os.path.join(request.getfixturevalue("tiny_checkpoint")("llama", tokenizer="llama2"), "")
    )


@pytest.fixture(scope="module")
def pair(tokenizer_dir: str):
    return TextTokenizer.from_dir(tokenizer_dir), transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


def test_encode_decode_match_transformers(pair) -> None:
    ours, ref = pair
    for text in TEXTS:
        for special in (True, False):
            assert ours.encode(text, add_special_tokens=special) == ref.encode(
                text, add_special_tokens=special
            )
        ids = ref.encode(text)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False)


def test_chat_template_matches_transformers(pair) -> None:
    ours, ref = pair
    for gen in (True, False):
        assert ours.apply_chat_template(CHAT, add_generation_prompt=gen) == ref.apply_chat_template(
            CHAT, add_generation_prompt=gen, tokenize=False
        )
    expected = ref.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ours.encode_chat(CHAT) == list(expected)
    with pytest.raises(InvalidRequest, match="content must be a string or a list of text parts, got int"):
        ours.apply_chat_template([{"role": "user", "content": 5}])


def test_special_ids_and_token_bytes(pair) -> None:
    ours, ref = pair
    facts = CheckpointText.from_dir(ours.path)  # stop and BOS ids: one source, the engine's
    assert facts.bos_token_id == ref.bos_token_id
    assert ref.eos_token_id in facts.eos_token_ids
    assert ours.vocab_size == len(ref)
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=False)
        raw = b"".join(ours.token_bytes(i) for i in ids)
        decoded = ours.decode(ids)
        # SentencePiece strips the space its first token carries; bytes keep it.
        assert raw.decode("utf-8") in (decoded, " " + decoded), text


def test_bos_flags_in_tokenizer_config_do_not_override_tokenizer_json(
    tmp_path, default_model_dir: str
) -> None:
    """As transformers v5 does: with a tokenizer.json, its post-processor alone decides about BOS/EOS."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(default_model_dir, name), tmp_path / name)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.update(add_bos_token=True, add_eos_token=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    ours = TextTokenizer.from_dir(str(tmp_path))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.encode("hello") == ref.encode("hello") == ours.encode("hello", False)


def test_template_sources_and_errors(tmp_path, default_model_dir: str) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(default_model_dir, name), tmp_path / name)
    msgs = [{"role": "user", "content": "x"}]
    (tmp_path / "chat_template.jinja").write_text("JINJA {{ messages[0]['content'] }}")
    assert TextTokenizer.from_dir(str(tmp_path)).apply_chat_template(msgs) == "JINJA x"
    (tmp_path / "chat_template.jinja").unlink()
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert TextTokenizer.from_dir(str(tmp_path)).apply_chat_template(msgs) == "D"
    cfg["chat_template"] = "{% for %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="tokenizer_config.json.*chat_template"):
        TextTokenizer.from_dir(str(tmp_path))
    del cfg["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="no chat template"):
        TextTokenizer.from_dir(str(tmp_path)).apply_chat_template(msgs)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        TextTokenizer.from_dir(str(tmp_path))
    with pytest.raises(CheckpointError, match="not found"):
        TextTokenizer.from_dir(str(tmp_path / "nowhere"))
