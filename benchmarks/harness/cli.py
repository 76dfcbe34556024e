"""Command line of the harness (shared by `python -m benchmarks.harness` and `conclave bench`).

    python -m benchmarks.harness --endpoint http://127.0.0.1:8000/v1 --dataset fixed \
        --num-requests 32 --max-concurrency 8 --output-len 64 --out result.json
    python -m benchmarks.harness --endpoint URL_A --endpoint URL_B --label plain --label conclave \
        --out compare.json --plots-dir plots/          # same request set against both, with ratios
    python -m benchmarks.harness compare a.json b.json --label a --label b --plots-dir plots/
    python -m benchmarks.harness --conclave-status ...  # endpoint, API key and hosts of the local cluster

Exit codes: 0 ok, 1 usage, 3 the run could not be done or every request failed.
API keys come from a file (--api-key-file) or from `conclave status --json`, never from argv.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.harness import compare as compare_mod
from benchmarks.harness import datasets, memory, runner
from benchmarks.harness.options import add_run_arguments
from benchmarks.harness.errors import HarnessError


def _host_map(items: list[str], flag: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items or []:
        host, sep, value = item.partition("=")
        if not sep or not host or not value:
            raise HarnessError("bad_host_spec", f"{flag} wants HOST=VALUE[,VALUE], got {item!r}", usage=True)
        out.setdefault(host, []).extend(v for v in value.split(",") if v)
    return out


def build_requests(args) -> list[datasets.SampleRequest]:
    if args.dataset == "random":
        vocab = args.vocab_size
        if vocab is None:
            if not args.model_dir:
                raise HarnessError("no_vocab_size", "the random dataset needs --vocab-size or --model-dir", usage=True)
            vocab = datasets.vocab_size_from_model_dir(args.model_dir)
        return datasets.random_tokens(args.num_requests, args.input_len, args.output_len, vocab, seed=args.seed,
                                      range_ratio=args.range_ratio)
    prompts = datasets.load_prompts(args.prompts_file) if args.prompts_file else datasets.BUILTIN_PROMPTS
    return datasets.fixed_prompts(args.num_requests, args.output_len, seed=args.seed, prompts=prompts)


def _conclave_status() -> dict:
    status = memory.read_conclave_status([sys.executable, "-m", "conclave.runtime"])
    if not status.get("endpoint") or status.get("running") is False:
        raise HarnessError("no_cluster", "`conclave status --json` shows no running cluster")
    return status


def config_for(args, endpoint: str, api_key: str | None, ca_cert: str | None = None) -> runner.BenchConfig:
    try:
        percentiles = tuple(float(x) for x in args.percentiles.split(",") if x)
    except ValueError:
        raise HarnessError("bad_percentiles", "--percentiles wants numbers like 50,90,99", usage=True) from None
    return runner.BenchConfig(
        endpoint=endpoint, model=args.model, api_key=api_key, ca_cert=ca_cert, concurrency=args.max_concurrency,
        request_rate=args.request_rate, burstiness=args.burstiness, seed=args.seed,
        max_duration_s=args.max_duration, request_timeout_s=args.request_timeout, warmups=args.warmups,
        ignore_eos=not args.no_ignore_eos, temperature=args.temperature, percentiles=percentiles)


def summary(result: dict, label: str = "") -> str:
    m = result.get("metrics")
    head = f"==== {label or result['config']['endpoint']} ===="
    if not m:
        return f"{head}\nno request completed or was sent (not sent: {result.get('not_sent')})"
    lines = [head,
             f"requests: {m['completed']} ok, {m['failed']} failed {m['errors'] or ''}, "
             f"{result.get('not_sent', 0)} not sent; duration {m['duration_s']:.2f} s",
             f"request throughput: {m['request_throughput']:.3f} req/s   output: {m['output_throughput']:.2f} tok/s   "
             f"total: {m['total_token_throughput']:.2f} tok/s"]
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        s = m[key]
        pcts = "  ".join(f"{k} {v:.2f}" for k, v in s.items() if k.startswith("p"))
        lines.append(f"{key[:-3].upper():5} ms: mean {s['mean']:.2f}  median {s['median']:.2f}  {pcts}")
    if result.get("memory"):
        mem = result["memory"]
        per = ", ".join(f"{h}: {v:.0f}" for h, v in mem["peak_rss_mib_per_host"].items())
        lines.append(f"peak RSS MiB per host: {per}; total {mem['peak_rss_mib_total']:.0f}")
    return "\n".join(lines)


def run_main(args) -> int:
    """Run the benchmark described by parsed options (or compare saved results with --compare-results)."""
    if getattr(args, "compare_results", None):
        return compare_files(args.compare_results, args.label, args.plots_dir, args.out)
    api_key = None
    ca_cert = args.ca_cert
    hosts = None
    endpoints = list(args.endpoint)
    if args.api_key_file:
        try:
            api_key = Path(args.api_key_file).read_text().strip() or None
        except OSError as exc:
            raise HarnessError("api_key_unreadable", f"cannot read {args.api_key_file}: {exc}", usage=True) from None
    if args.conclave_status:
        status = _conclave_status()
        endpoints = endpoints or [status["endpoint"]]
        api_key = api_key or status.get("api_key")
        ca_cert = ca_cert or status.get("ca_cert")
        hosts = memory.netns_hosts(memory.conclave_status_hosts(status))
    if not endpoints:
        raise HarnessError("no_endpoint", "give --endpoint URL (twice to compare) or --conclave-status", usage=True)
    pid_roots = {h: [int(p) for p in v] for h, v in _host_map(args.host_pids, "--host-pids").items()} \
        if args.host_pids else {}
    netns = {h: v[0] for h, v in _host_map(args.host_netns, "--host-netns").items()}
    if pid_roots or netns:
        by_pids = memory.pid_trees(pid_roots)
        by_ns = memory.netns_hosts(netns)
        hosts = lambda: {**by_pids(), **by_ns()}  # noqa: E731
    labels = list(args.label) or [f"endpoint{i}" for i in range(len(endpoints))]
    if len(labels) != len(endpoints):
        raise HarnessError("bad_labels", "give one --label per --endpoint", usage=True)
    requests = build_requests(args)
    results = []
    for endpoint, label in zip(endpoints, labels):
        result = runner.run(config_for(args, endpoint, api_key, ca_cert), requests, hosts)
        result["label"] = label
        results.append(result)
        if not args.json:
            print(summary(result, label), flush=True)
    if len(results) == 1:
        report = results[0]
    else:
        report = {"compare": compare_mod.compare_rows(results), "labels": labels, "results": results}
        if not args.json:
            print(compare_mod.markdown_table(results, labels))
        if args.plots_dir:
            report["plots"] = [str(p) for p in compare_mod.plot_compare(results, labels, args.plots_dir)]
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
    failed_all = [r["label"] for r in results if r.get("all_failed") is not None or not r.get("metrics")]
    if failed_all:
        raise HarnessError("all_requests_failed", f"no request completed against: {', '.join(failed_all)}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 (argparse's 2 would read as "verification failed" in Conclave's codes)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(1)


def compare_files(files: list[str], labels: list[str], plots_dir: str | None, out: str | None) -> int:
    """Compare saved single-endpoint results (the first is the baseline): table, ratios, plots."""
    if len(files) < 2:
        raise HarnessError("too_few_results", "compare needs two or more result files", usage=True)
    try:
        results = [json.loads(Path(f).read_text()) for f in files]
    except (OSError, ValueError) as exc:
        raise HarnessError("results_unreadable", f"cannot read a result file: {exc}", usage=True) from None
    labels = list(labels) or [r.get("label") or Path(f).stem for r, f in zip(results, files)]
    if len(labels) != len(results):
        raise HarnessError("bad_labels", "give one --label per result file", usage=True)
    print(compare_mod.markdown_table(results, labels))
    report = {"compare": compare_mod.compare_rows(results), "labels": labels}
    if plots_dir:
        report["plots"] = [str(p) for p in compare_mod.plot_compare(results, labels, plots_dir)]
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def compare_main(argv: list[str]) -> int:
    p = _Parser(prog="benchmarks.harness compare",
                description="Compare saved single-endpoint results (the first is the baseline).")
    p.add_argument("results", nargs="+", help="JSON files written with --out")
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--plots-dir")
    p.add_argument("--out")
    args = p.parse_args(argv)
    return compare_files(args.results, args.label, args.plots_dir, args.out)


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.harness") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["compare"]:
            return compare_main(argv[1:])
        parser = _Parser(prog=prog, description=__doc__.split("\n\n")[0],
                                         formatter_class=argparse.RawDescriptionHelpFormatter,
                                         epilog=__doc__.split("\n\n", 1)[1])
        add_run_arguments(parser)
        return run_main(parser.parse_args(argv))
    except HarnessError as exc:
        print(f"{prog}: error [{exc.reason}]: {exc.message}", file=sys.stderr)
        return 1 if exc.usage else 3
