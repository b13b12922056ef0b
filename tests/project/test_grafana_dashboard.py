"""The Grafana dashboard (dashboards/vfarm-scale.json) queries exactly what the scaler exports:
every metric in every PromQL expression is one a real `Metrics` registry prints after a cycle,
every exported metric is on some panel, and the labels it filters, groups and names series by
are labels those metrics carry. Plus what Grafana needs to import it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.scaler.test_scale_apply import World, job
from vfarm.scaler import loop

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "vfarm-scale.json"
FARM_MATCHER = ("farm", "=~", "$farm")
# PromQL words that are neither metrics nor labels (functions and aggregations are told by their "(").
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Every vector selector of a PromQL expression: (metric name, [(label, operator, value)])."""
    strings: list[str] = []

    def keep(match: re.Match[str]) -> str:
        strings.append(json.loads(match.group(0)))
        return f'"#{len(strings) - 1}"'

    text = re.sub(r'"(?:[^"\\]|\\.)*"', keep, expr)  # string literals may hold anything: set aside
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations ([5m], [$__rate_interval])
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    if "$" in text:
        raise ValueError(f"a template variable outside a string or a range: {expr}")
    found = []
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", text):
        name, braces, call = match.groups()
        if call or name in KEYWORDS:
            continue
        matchers = [(label, op, strings[int(index)]) for label, op, index in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"#(\d+)"', braces or "")]
        found.append((name, matchers))
    return found


def grouping(expr: str) -> set[str]:
    """The labels of every by (...) clause: what the result's series carry."""
    return {label.strip() for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in clause.split(",") if label.strip()}


def test_the_selector_reader_finds_metrics_not_functions_labels_or_strings() -> None:
    expr = '60 * sum by (state, farm) (rate(a_total{farm=~"$farm", x!="b{c} d_e"}[$__rate_interval])) / on (farm) group_left b + time() - c'
    assert selectors(expr) == [("a_total", [("farm", "=~", "$farm"), ("x", "!=", "b{c} d_e")]), ("b", []), ("c", [])]
    assert selectors("max(x:y:rate5m offset 5m) and 1e3") == [("x:y:rate5m", [])]
    assert grouping(expr) == {"state", "farm"}
    with pytest.raises(ValueError, match="template variable"):
        selectors("rate(a[5m]) * $factor")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel."""
    return [(p["title"], t) for p in panels() for t in p["targets"]]


@pytest.fixture
def exported(caplog: pytest.LogCaptureFixture) -> dict[str, set[str]]:
    """Every series name a scaler's registry prints (prometheus_client's `generate_latest`) after
    one applied cycle that launched, with its label names. Counters print with `_total`; their
    `_created` series (when each labelled child was created) are prometheus_client's, not the scaler's."""
    world = World(caplog)
    world.jobs = [job(i) for i in range(3)]
    assert world.scaler.cycle() is not None and world.cloud.instances, "the cycle should have launched"
    families = list(text_string_to_metric_families(world.metrics.text()))
    # A hybrid farm's registry has per-cloud families as well (labelled from the start): they need panels too.
    single = {f.name for f in families}
    families += [f for f in text_string_to_metric_families(loop.Metrics("farm", ["site", "aws"]).text()) if f.name not in single]
    counters = {f.name for f in families if f.type == "counter"}
    names: dict[str, set[str]] = {}
    for family in families:
        if family.name.endswith("_created") and family.name[: -len("_created")] in counters:
            continue
        assert family.samples, f"{family.name}: no sample after an applied cycle"
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    assert "vfarm_scale_launches_total" in names and names["vfarm_scale_instances"] == {"farm", "state"}
    return names


def test_every_queried_metric_is_exported_and_every_exported_one_is_on_a_panel(exported: dict[str, set[str]]) -> None:
    used = {name for _, target in queries() for name, _ in selectors(target["expr"])}
    farm_variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "farm")
    assert farm_variable["query"] == farm_variable["definition"]
    used |= set(re.findall(r"label_values\((\w+)\s*,\s*farm\)", farm_variable["query"]))
    assert used, "no metric found in the dashboard"
    assert used - set(exported) == set(), "queried but not exported"
    assert set(exported) - used == set(), "exported but on no panel"


def test_every_selector_is_the_chosen_farms_and_matches_labels_the_metric_has(exported: dict[str, set[str]]) -> None:
    for title, target in queries():
        for name, matchers in selectors(target["expr"]):
            assert FARM_MATCHER in matchers, f"{title}: {name} not restricted to the farm variable"
            assert {label for label, _, _ in matchers} <= exported[name], f"{title}: {name} has no such label"


def test_series_are_grouped_and_named_by_labels_they_carry(exported: dict[str, set[str]]) -> None:
    for title, target in queries():
        metrics_labels = set().union(*(exported[name] for name, _ in selectors(target["expr"])))
        by = grouping(target["expr"])
        assert by <= metrics_labels, f"{title}: grouped by a label its metrics lack"
        named = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert named <= by, f"{title}: the legend names {named - by}, which the aggregated series no longer carry"


def test_grafana_can_import_it() -> None:
    dash = dashboard()
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["title"] and re.fullmatch(r"[\w-]{1,40}", dash["uid"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["farm"]["type"] == "query"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
