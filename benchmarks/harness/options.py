"""The harness's run options, in a module with no heavy imports.

`conclave bench` registers these on its own parser at CLI start-up, so this file must stay
cheap to import (argparse and math only); the work happens in benchmarks.harness.cli.
"""
from __future__ import annotations

import argparse
import math


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target")
    g.add_argument("--endpoint", action="append", default=[],
                   help="OpenAI base URL ending in /v1; give twice (or more) to compare, the first is the baseline")
    g.add_argument("--label", action="append", default=[], help="name of each endpoint in tables and plots")
    g.add_argument("--model", help="model name to request (default: first id of GET /v1/models)")
    g.add_argument("--api-key-file", help="file holding the API key (applies to every endpoint)")
    g.add_argument("--ca-cert", help="PEM file to verify an https endpoint against (Conclave: `ca_cert` of status)")
    g.add_argument("--conclave-status", action="store_true",
                   help="take endpoint, API key, CA cert and hosts (memory by network namespace) from `conclave status --json`")
    d = p.add_argument_group("request set (bounded, seeded)")
    d.add_argument("--dataset", choices=("random", "fixed"), default="fixed",
                   help="random: random token ids of --input-len; fixed: built-in or --prompts-file prompts")
    d.add_argument("--num-requests", type=int, default=32)
    d.add_argument("--input-len", type=int, default=128, help="prompt tokens (random dataset)")
    d.add_argument("--output-len", type=int, default=64, help="max_tokens of every request")
    d.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in len*(1±r) (random dataset)")
    d.add_argument("--vocab-size", type=int, help="token id range of the random dataset")
    d.add_argument("--model-dir", help="Hugging Face folder to read vocab_size from (random dataset)")
    d.add_argument("--prompts-file", help="one prompt per line (fixed dataset)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at EOS (default: exact lengths)")
    d.add_argument("--temperature", type=float, default=0.0)
    l = p.add_argument_group("load and bounds")
    l.add_argument("--max-concurrency", type=int, help="requests in flight at most (default: unbounded)")
    l.add_argument("--request-rate", type=float, default=math.inf, help="requests/s, Poisson (default inf: all at once)")
    l.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrival gaps (1 = Poisson)")
    l.add_argument("--max-duration", type=float, default=600.0, help="stop the measured phase after this many s")
    l.add_argument("--request-timeout", type=float, default=300.0)
    l.add_argument("--warmups", type=int, default=1, help="sequential unmeasured requests first")
    l.add_argument("--percentiles", default="50,90,99")
    m = p.add_argument_group("memory (peak RSS per host, sampled from /proc)")
    m.add_argument("--host-pids", action="append", default=[], metavar="HOST=PID[,PID]",
                   help="a host is the process trees under these pids (repeatable)")
    m.add_argument("--host-netns", action="append", default=[], metavar="HOST=NETNS",
                   help="a host is every process in this network namespace (repeatable)")
    o = p.add_argument_group("output")
    o.add_argument("--out", help="write the JSON result here")
    o.add_argument("--plots-dir", help="write PNG plots here (compare mode)")
    o.add_argument("--json", action="store_true", help="print the JSON result instead of a summary")
    o.add_argument("--compare-results", nargs="+", metavar="FILE",
                   help="instead of running: compare saved results (first is the baseline), with --label/--plots-dir")
