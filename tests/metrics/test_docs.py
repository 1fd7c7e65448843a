"""docs/metrics.md documents every exported metric, with the type it has on the wire."""

from __future__ import annotations

import re
from pathlib import Path

from paddlellm.protocol.metric_names import ALL_METRICS, PREFIX

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_ROW = re.compile(r"^\|\s*`(?P<name>" + re.escape(PREFIX) + r"[a-zA-Z0-9_:]+)`\s*\|\s*(?P<kind>\w+)\s*\|")


def documented_metrics(text: str | None = None) -> dict[str, str]:
    """{metric name: type} from the tables of docs/metrics.md (rows whose first cell is a metric name)."""
    out: dict[str, str] = {}
    for line in (DOCS.read_text() if text is None else text).splitlines():
        if m := _ROW.match(line):
            assert m.group("name") not in out, f"{m.group('name')} documented twice"
            out[m.group("name")] = m.group("kind")
    return out


def test_every_metric_in_the_table_is_documented_with_its_type() -> None:
    docs = documented_metrics()
    missing = sorted(s.name for s in ALL_METRICS if s.name not in docs)
    assert not missing, f"metrics missing from docs/metrics.md: {missing}"
    wrong = sorted(s.name for s in ALL_METRICS if docs[s.name] != s.kind)
    assert not wrong, f"documented with the wrong type: {wrong}"
    stale = sorted(set(docs) - {s.name for s in ALL_METRICS})
    assert not stale, f"documented but not exported: {stale}"


def test_each_row_names_its_unit_and_equivalents() -> None:
    for line in DOCS.read_text().splitlines():
        if _ROW.match(line):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == 6 and all(cells), line  # name, type, unit, meaning, FastDeploy, vLLM


def test_the_parser_notices_an_undocumented_metric() -> None:
    text = DOCS.read_text()
    first = ALL_METRICS[0].name
    without = "\n".join(line for line in text.splitlines() if f"`{first}`" not in line)
    assert first not in documented_metrics(without)


def _dashboard_module():
    import importlib.util
    import sys

    path = DOCS.parents[1] / "benchmarks" / "metrics_panels.py"
    spec = importlib.util.spec_from_file_location("_metrics_panels", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_grafana_dashboard_uses_exported_metrics_and_matches_the_benchmark_panels() -> None:
    import json

    dashboard = json.loads((DOCS.parent / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for e in exprs
        for name in re.findall(r"paddlellm:[a-z0-9_]+", e)
    }
    exported = {s.name for s in ALL_METRICS}
    assert used and used <= exported, sorted(used - exported)
    # The PNG's panels and Grafana's are one definition: the committed JSON is what the benchmark writes.
    assert dashboard == _dashboard_module().grafana_dashboard()
