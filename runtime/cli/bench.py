"""`conclave bench ...`: the benchmark harness (issue 7), from a checkout.

The harness lives in the repository's benchmarks/ folder, which is deliberately not part of
the installed `conclave` package (a measuring tool, not runtime). This wrapper finds it beside
the package's source folder (editable installs and checkouts), registers the harness's own
options (benchmarks.harness.options: cheap to import) and runs it, mapping its errors onto the
CLI's error funnel. Without benchmarks/ (a wheel install) `conclave bench` fails with a clear
error instead of a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from conclave.runtime import config
from conclave.runtime.errors import ConclaveError, ExitCode

UNAVAILABLE = ("the benchmark harness is not installed with the package; run `conclave bench` from a "
               "checkout of the repository (benchmarks/harness beside runtime/)")


def _import(name: str):
    """Import a harness module, adding the checkout root to sys.path when it has benchmarks/harness."""
    root = config.REPO_ROOT
    if (root / "benchmarks" / "harness" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "benchmarks":
            raise ConclaveError("bench_unavailable", UNAVAILABLE, exit_code=ExitCode.USAGE) from None
        raise ConclaveError("bench_dependency_missing",
                            f"the benchmark harness needs the Python module {exc.name!r} (aiohttp, numpy; "
                            f"matplotlib for plots)", exit_code=ExitCode.USAGE) from None


def _bench(args) -> int:
    cli = _import("benchmarks.harness.cli")
    errors = _import("benchmarks.harness.errors")
    try:
        return cli.run_main(args)
    except errors.HarnessError as exc:
        raise ConclaveError(exc.reason, exc.message,
                            exit_code=ExitCode.USAGE if exc.usage else ExitCode.RUNTIME) from None


def _unavailable(args) -> int:
    raise ConclaveError("bench_unavailable", UNAVAILABLE, exit_code=ExitCode.USAGE)


def register(subparsers) -> None:
    try:
        options = _import("benchmarks.harness.options")
    except ConclaveError:
        p = subparsers.add_parser("bench", help="benchmark an OpenAI endpoint (needs a checkout)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_unavailable)
        return
    p = subparsers.add_parser("bench", help="benchmark OpenAI endpoints: throughput, TTFT, TPOT, ITL, peak memory",
                              description="Bounded, seeded load against OpenAI-compatible endpoints "
                                          "(see benchmarks/README.md).")
    options.add_run_arguments(p)
    p.set_defaults(func=_bench)
