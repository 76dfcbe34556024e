"""Compare benchmark results: a table of metrics with ratios, and PNG plots.

Every ratio is `candidate / baseline` of numbers measured in the same invocation (the first
result is the baseline). For throughput a ratio above 1 is better; for latencies below 1 is
better; the table says which direction is better so nobody has to remember.
"""
from __future__ import annotations

import math
from pathlib import Path

# (label, path into result["metrics"], higher is better)
ROWS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("request throughput (req/s)", ("request_throughput",), True),
    ("output throughput (tok/s)", ("output_throughput",), True),
    ("TTFT mean (ms)", ("ttft_ms", "mean"), False),
    ("TTFT p50 (ms)", ("ttft_ms", "p50"), False),
    ("TTFT p90 (ms)", ("ttft_ms", "p90"), False),
    ("TTFT p99 (ms)", ("ttft_ms", "p99"), False),
    ("TPOT mean (ms)", ("tpot_ms", "mean"), False),
    ("TPOT p50 (ms)", ("tpot_ms", "p50"), False),
    ("TPOT p90 (ms)", ("tpot_ms", "p90"), False),
    ("TPOT p99 (ms)", ("tpot_ms", "p99"), False),
    ("ITL mean (ms)", ("itl_ms", "mean"), False),
    ("ITL p50 (ms)", ("itl_ms", "p50"), False),
    ("ITL p90 (ms)", ("itl_ms", "p90"), False),
    ("ITL p99 (ms)", ("itl_ms", "p99"), False),
    ("failed requests", ("failed",), False),
)


def metric(result: dict, path: tuple[str, ...]) -> float | None:
    value = result.get("metrics") or {}
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def ratio(candidate: float | None, baseline: float | None) -> float | None:
    """candidate / baseline; None when undefined (missing value or baseline 0)."""
    if candidate is None or baseline is None or baseline == 0 or math.isnan(baseline):
        return None
    return candidate / baseline


def peak_rss_total(result: dict) -> float | None:
    mem = result.get("memory") or {}
    return mem.get("peak_rss_mib_total")


def compare_rows(results: list[dict]) -> list[dict]:
    """One row per metric: values of every result and the ratio of each to results[0]."""
    rows = []
    spec = list(ROWS) + [("peak RSS total (MiB)", None, False)]
    for label, path, higher in spec:
        values = [metric(r, path) if path else peak_rss_total(r) for r in results]
        rows.append({"metric": label, "higher_is_better": higher, "values": values,
                     "ratios": [ratio(v, values[0]) for v in values[1:]]})
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(results: list[dict], labels: list[str]) -> str:
    if len(results) != len(labels) or len(results) < 2:
        raise ValueError("compare needs at least two results, one label each")
    head = ["metric", *labels, *(f"{lab} / {labels[0]}" for lab in labels[1:]), "better"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 2) + "---|"]
    for row in compare_rows(results):
        cells = [row["metric"], *(_fmt(v) for v in row["values"]), *(_fmt(r, 3) for r in row["ratios"]),
                 "higher" if row["higher_is_better"] else "lower"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_compare(results: list[dict], labels: list[str], out_dir: str | Path, stem: str = "compare") -> list[Path]:
    """Two PNGs: throughput bars, and latency percentiles (TTFT/TPOT/ITL) side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (name, path) in zip(axes, (("output tokens/s", ("output_throughput",)),
                                        ("requests/s", ("request_throughput",)))):
        values = [metric(r, path) or 0.0 for r in results]
        bars = ax.bar(labels, values, color=[f"C{i}" for i in range(len(labels))])
        for bar, value in zip(bars, values):
            text = f"{value:.1f}" if bar is bars[0] else f"{value:.1f}\n(x{value / values[0]:.2f})" if values[0] \
                else f"{value:.1f}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=8)
        ax.set_title(name)
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    paths.append(out_dir / f"{stem}_throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key in zip(axes, ("ttft_ms", "tpot_ms", "itl_ms")):
        stats = ("mean", "p50", "p90", "p99")
        width = 0.8 / len(results)
        for i, (res, lab) in enumerate(zip(results, labels)):
            ys = [metric(res, (key, s)) or 0.0 for s in stats]
            ax.bar([j + i * width for j in range(len(stats))], ys, width, label=lab, color=f"C{i}")
        ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(stats))], stats)
        ax.set_title(key.replace("_ms", "").upper() + " (ms)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / f"{stem}_latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
