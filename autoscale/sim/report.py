"""The simulator's outputs: a Markdown table of results and a PNG of load, replicas and latency over time."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .stats import SimResult


def _f(x: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(results: Sequence[SimResult]) -> str:
    """One row per run; ratios of replica-hours against the first run."""
    base = results[0].summary()["replica_h"] if results else None
    lines = [
        f"| policy | trace | requests | TTFT <= {results[0].slo_ttft_s:g}s | TPOT <= {results[0].slo_tpot_s * 1000:g}ms "
        "| TTFT p50 / p99 ms | TPOT p50 / p99 ms | replica-h | vs first | GPU-h | cost $ | shed | failed | max running "
        "| target changes | prefix hits | sim wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ] if results else []
    for r in results:
        s = r.summary()
        ratio = f"{s['replica_h'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {s['policy']} | {s['trace']} | {s['requests']:,.0f} | {s['ttft_slo_pct']:.1f}% | {s['tpot_slo_pct']:.1f}% "
            f"| {_f(s['ttft_p50_ms'])} / {_f(s['ttft_p99_ms'])} | {_f(s['tpot_p50_ms'], '{:.1f}')} / "
            f"{_f(s['tpot_p99_ms'], '{:.1f}')} | {s['replica_h']:,.1f} | {ratio} | {s['gpu_h']:,.1f} "
            f"| {s['cost_usd']:,.0f} "
            f"| {s['shed']:,.0f} | {s['failed']:,.0f} | {s['max_running']} | {s['scale_changes']} "
            f"| {_f(s['prefix_hit_rate'], '{:.0%}')} | {s['wall_s']:.1f} |")
    return "\n".join(lines)


def plot(results: Sequence[SimResult], out: Path, title: str = "") -> Path:
    """Three panels sharing time: arrivals and load, replicas, TTFT (p50 solid, p99 dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = results and results[0].duration_s > 4 * 3600
    scale, unit = (3600.0, "hours") if hours else (1.0, "seconds")
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    for i, r in enumerate(results):
        t = [x / scale for x in r.series.t]
        color = f"C{i}"
        if i == 0:
            a1.plot(t, r.series.arrival_rate, color="black", label="arrivals/s")
        a1.plot(t, r.series.load, color=color, alpha=0.7, label=f"{r.policy}: requests in system")
        a2.step(t, r.series.running, where="post", color=color, label=f"{r.policy}: running")
        a2.step(t, r.series.target, where="post", color=color, linestyle="--", alpha=0.6, label=f"{r.policy}: target")
        a3.plot(t, [None if v is None else v * 1000 for v in r.series.ttft_p50], color=color, label=f"{r.policy} p50")
        a3.plot(t, [None if v is None else v * 1000 for v in r.series.ttft_p99], color=color, linestyle=":",
                label=f"{r.policy} p99")
    a1.set_ylabel("requests")
    a1.legend(loc="upper left", fontsize=8)
    a2.set_ylabel("replicas")
    a2.legend(loc="upper left", fontsize=8)
    a3.set_ylabel("TTFT ms")
    a3.set_yscale("log")
    a3.legend(loc="upper left", fontsize=8)
    a3.set_xlabel(unit)
    if title:
        a1.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
