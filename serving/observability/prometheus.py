"""`GET /metrics` text: each replica's engine under vLLM's own metric names (labelled by model and replica, so
dashboards built for `vllm serve` work unchanged) plus Tide's fleet metrics. Pure: data in, bytes out."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

_LABELS = ["model_name", "engine", "replica"]


class _Families:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterable[Any]:
        return self.families


def _buckets(h: Mapping[str, Any]) -> list[tuple[str, float]]:
    out, total = [], 0
    for le, n in zip([*h["buckets"], "+Inf"], h["counts"]):
        total += n
        out.append((str(float(le)) if le != "+Inf" else le, total))
    return out


def render_prometheus(replicas: Iterable[tuple[str, str, Mapping[str, Any]]],
                      models: Mapping[str, Mapping[str, Any]],
                      decisions: Mapping[str, Mapping[str, int]],
                      rejected: Mapping[tuple[str, str], int]) -> bytes:
    """replicas: (model, replica id, engine snapshot); models: {model: {desired, running, held}};
    decisions: {model: {action: count}}; rejected: {(model, reason): count} from the ingress."""
    g = lambda name, doc, labels=_LABELS: GaugeMetricFamily(name, doc, labels=labels)  # noqa: E731
    c = lambda name, doc, labels=_LABELS: CounterMetricFamily(name, doc, labels=labels)  # noqa: E731
    h = lambda name, doc: HistogramMetricFamily(name, doc, labels=_LABELS)  # noqa: E731
    running = g("vllm:num_requests_running", "Number of requests in model execution batches.")
    waiting = g("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
    kv = g("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
    prompt = c("vllm:prompt_tokens", "Number of prefill tokens processed.")
    gen = c("vllm:generation_tokens", "Number of generation tokens processed.")
    preempt = c("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
    success = c("vllm:request_success", "Count of successfully processed requests.", [*_LABELS, "finished_reason"])
    ttft = h("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.")
    itl = h("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.")
    e2e = h("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.")
    queue = h("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.")
    aborted = c("tide_requests_aborted", "Requests aborted in the engine because the client went away.")
    for model, replica, s in replicas:
        labels = [model, "0", replica]
        running.add_metric(labels, s["running"])
        waiting.add_metric(labels, s["waiting"])
        kv.add_metric(labels, s["kv_cache_usage"])
        prompt.add_metric(labels, s["prompt_tokens"])
        gen.add_metric(labels, s["generation_tokens"])
        preempt.add_metric(labels, s["preemptions"])
        aborted.add_metric(labels, s["aborted"])
        for reason, n in sorted(s["success"].items()):
            success.add_metric([*labels, reason], n)
        for fam, key in ((ttft, "ttft"), (itl, "itl"), (e2e, "e2e"), (queue, "queue")):
            fam.add_metric(labels, _buckets(s[key]), s[key]["sum"])
    desired = g("tide_replicas_desired", "Replicas Tide's autoscaler asks for.", ["model_name"])
    live = g("tide_replicas_running", "Replicas serving.", ["model_name"])
    held = g("tide_requests_held", "Requests held while a cold model starts.", ["model_name"])
    for model, m in models.items():
        if m.get("desired") is not None:
            desired.add_metric([model], m["desired"])
        live.add_metric([model], m.get("running", 0))
        held.add_metric([model], m.get("held", 0))
    dec = c("tide_autoscaler_decisions", "Scaling decisions that changed the target.", ["model_name", "action"])
    for model, actions in decisions.items():
        for action, n in sorted(actions.items()):
            dec.add_metric([model, action], n)
    rej = c("tide_requests_rejected", "Requests the ingress turned away, by reason.", ["model_name", "reason"])
    for (model, reason), n in sorted(rejected.items()):
        rej.add_metric([model, reason], n)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([running, waiting, kv, prompt, gen, preempt, success, ttft, itl, e2e, queue,
                                 aborted, desired, live, held, dec, rej]))
    return generate_latest(registry)
