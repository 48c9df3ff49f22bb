"""The Grafana example (examples/grafana/tide-dashboard.json) queries only metrics and labels that Tide's
`/metrics` really renders: the exporter's text is built in-process from a synthetic fleet and parsed back."""

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.observability.metrics import EngineCounters
from serving.observability.status import fleet_status, metrics_text

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "tide-dashboard.json"

# A metric selector: a name starting with vllm: or tide_, optionally followed by {matchers}.
_SELECTOR = re.compile(r"(?<![\w:])((?:vllm:|tide_)[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def _exporter_samples() -> tuple[dict[str, set[str]], dict[str, str], set[str]]:
    """What /metrics renders for a synthetic fleet with every metric populated:
    ({sample name: its label names}, {sample name: family type}, {family names})."""
    c = EngineCounters(window_s=10)
    c.on_scheduler(waiting=2, running=3, kv_cache_usage=0.25)
    c.on_iteration(10.0, 64, 8, 1, [0.05, 0.3], [0.02, 0.04], [("stop", 1.2, 0.1), ("length", 3.0, 0.4)])
    c.on_abort()
    hub = {"replicas": {("tiny", "r1"): c.snapshot(10.0, unfinished=5)},
           "decisions": {"model-tiny": {"desired": 2, "running": 1, "action": "scale_up", "reason": "queue",
                                        "time": 9.0}},
           "decision_counts": {"model-tiny": {"scale_up": 1}},
           "rejected": {("tiny", "too_many_held"): 2, ("tiny", "cold_start_timeout"): 1}}
    status = fleet_status(["tiny"], {"tiny": (1, 2)}, hub, {"tiny": 1}, {"tiny": 20.0}, now=10.0)
    labels: dict[str, set[str]] = {}
    kinds: dict[str, str] = {}
    families = set()
    for fam in text_string_to_metric_families(metrics_text(status, hub).decode()):
        assert fam.samples, f"synthetic fleet left {fam.name} empty; populate it so its labels are known"
        families.add(fam.name)
        for s in fam.samples:
            labels.setdefault(s.name, set()).update(s.labels)
            kinds[s.name] = fam.type
    return labels, kinds, families


def _family(sample: str) -> str:
    """The family a sample belongs to (prometheus_client drops `_total` from counter family names)."""
    for suffix in ("_total", *_HIST_SUFFIXES):
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside a collapsed row
    return out


def _queries(dash: dict) -> list[tuple[str, str, str]]:
    """(where, PromQL, legendFormat) for every panel target and every query variable."""
    out = []
    for p in _panels(dash):
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"], t.get("legendFormat", "")))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']}", q, ""))
    return out


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    return [(m.group(1), set(_MATCHER.findall(m.group(2) or ""))) for m in _SELECTOR.finditer(expr)]


def check_dashboard(dash: dict) -> list[str]:
    """Every problem found, as readable lines (empty when the dashboard matches the exporter)."""
    labels, kinds, families = _exporter_samples()
    problems: list[str] = []
    used = set()
    for where, expr, legend in _queries(dash):
        selectors = _selectors(expr)
        if not selectors:
            problems.append(f"{where}: no vllm:/tide_ metric in {expr!r}")
        expr_labels: set[str] = set()
        for name, matched in selectors:
            if name not in labels:
                problems.append(f"{where}: {name!r} is not rendered by /metrics (no family {_family(name)!r})")
                continue
            used.add(_family(name))
            expr_labels |= labels[name]
            for label in sorted(matched - labels[name]):
                problems.append(f"{where}: {name} has no label {label!r} (has {sorted(labels[name])})")
            rated = re.search(r"\b(?:rate|irate|increase)\s*\(\s*" + re.escape(name) + r"(?![\w:])", expr)
            if kinds[name] == "gauge" and rated:
                problems.append(f"{where}: rate()/increase() over the gauge {name}")
            if kinds[name] in ("counter", "histogram") and not rated:
                problems.append(f"{where}: counter {name} used without rate()/increase()")
        grouping = {g.strip() for grp in _GROUPING.findall(expr) for g in grp.split(",") if g.strip()}
        for label in sorted(grouping - expr_labels):
            problems.append(f"{where}: grouped by {label!r}, which none of its metrics has")
        if "histogram_quantile" in expr and "le" not in grouping:
            problems.append(f"{where}: histogram_quantile without `le` in its grouping")
        shown = grouping - {"le"} if grouping else expr_labels
        for label in sorted(set(_LEGEND.findall(legend)) - shown):
            problems.append(f"{where}: legend uses {{{{{label}}}}}, which the query's result does not carry")
    for fam in sorted(families - used):
        problems.append(f"exported metric {fam} is on no panel")
    return problems


def test_dashboard_is_grafana_shaped():
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36 and dash["title"] and dash["uid"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["model_name"]["type"] == "query"
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(g) and 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert 'model_name=~"$model_name"' in t["expr"], f"{p['title']}: not filtered by $model_name"


def test_dashboard_queries_only_what_metrics_renders():
    problems = check_dashboard(_dashboard())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("original, broken", [
    ("vllm:time_to_first_token_seconds_bucket", "vllm:time_to_first_tokens_seconds_bucket"),  # typo in a name
    ("tide_requests_rejected_total", "tide_requests_rejected"),  # counter without _total
    ("sum by (model_name, reason)", "sum by (model_name, cause)"),  # a label the metric lacks
    ("vllm:num_requests_waiting{", "vllm:num_requests_waiting{engine_id=\"0\","),  # matcher on a missing label
    ("(vllm:num_requests_waiting{model_name=~\"$model_name\"})",  # rate() over a gauge
     "(rate(vllm:num_requests_waiting{model_name=~\"$model_name\"}[5m]))"),
])
def test_check_catches_a_wrong_query(original, broken):
    esc = lambda s: s.replace('"', '\\"')  # noqa: E731  (the query as it is written inside the JSON)
    text = DASHBOARD.read_text()
    assert esc(original) in text
    assert check_dashboard(json.loads(text.replace(esc(original), esc(broken), 1))), f"{broken!r} went unnoticed"
