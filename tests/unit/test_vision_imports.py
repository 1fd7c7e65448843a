"""paddlellm/vision runs in the Triton tokenizer model: numpy, Pillow and stdlib only, never paddle."""

from __future__ import annotations

from tests.test_boundaries import ROOT, _imports, _rel


def test_vision_package_imports_no_paddle_or_torch() -> None:
    bad = [
        (_rel(p), m)
        for p in (ROOT / "paddlellm" / "vision").rglob("*.py")
        for m in _imports(p)
        if m.split(".")[0] in ("paddle", "torch", "transformers")
        or m.startswith(("paddlellm.models", "paddlellm.layers", "paddlellm.worker", "paddlellm.engine"))
    ]
    assert not bad, bad
