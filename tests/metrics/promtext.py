"""A strict reader of the Prometheus text format (0.0.4) for tests: families with their types, and samples."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$"
)
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


@dataclass
class Exposition:
    types: dict[str, str] = field(default_factory=dict)  # family name -> counter | gauge | histogram | ...
    helps: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def family_of(self, sample_name: str) -> str | None:
        if sample_name in self.types:
            return sample_name
        for suffix in _SUFFIXES:
            if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in self.types:
                return sample_name[: -len(suffix)]
        return None

    def matching(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (lab, v)
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == w for k, w in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """Sum over every sample of `name` whose labels include `labels` (0 when there is none)."""
        return sum(v for _, v in self.matching(name, **labels))

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)

    def hist_count(self, name: str, **labels: str) -> float:
        return self.value(name + "_count", **labels)

    def hist_sum(self, name: str, **labels: str) -> float:
        return self.value(name + "_sum", **labels)

    def prefixed(self, prefix: str) -> set[str]:
        return {f for f in self.types if f.startswith(prefix)}


def parse(text: str) -> Exposition:
    """Parse, failing on any line that is not valid exposition text or on a sample of no declared family."""
    out = Exposition()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in out.types, f"line {lineno}: family {name} declared twice"
            out.types[name] = kind.strip()
            continue
        if line.startswith("# HELP "):
            parts = line.split(" ", 3)
            out.helps[parts[2]] = parts[3] if len(parts) > 3 else ""
            continue
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"line {lineno} is not a sample: {line!r}"
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        raw = m.group("value")
        value = math.inf if raw == "+Inf" else (-math.inf if raw == "-Inf" else float(raw))
        assert out.family_of(m.group("name")) is not None, f"line {lineno}: sample of no declared family"
        out.samples.append((m.group("name"), labels, value))
    return out
