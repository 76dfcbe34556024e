"""The `conclave` command: one argument parser, one error funnel, fixed exit codes.

Each command group lives in its own module under conclave.runtime.cli and exposes
`register(subparsers)`; its handlers return an exit code (int) or None for 0, and raise
ConclaveError for failures. The funnel prints the error (JSON with --json) and exits with the
error's code. Usage errors exit 1 (argparse's default of 2 would collide with
"verification failed").
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from conclave.runtime.errors import ConclaveError, ExitCode

COMMAND_MODULES = (
    "conclave.runtime.cli.model",
    "conclave.runtime.cli.cluster",
    "conclave.runtime.cli.attest",
    "conclave.runtime.cli.node",
    "conclave.runtime.cli.mesh",
    "conclave.runtime.cli.manifest",
    "conclave.runtime.cli.owner",
    "conclave.runtime.cli.verify",
    "conclave.runtime.cli.report",
    "conclave.runtime.cli.bench",
    "conclave.runtime.cli.measure",
    "conclave.runtime.cli.rendezvous",
    "conclave.runtime.cli.broker",
    "conclave.runtime.cli.env",
    "conclave.runtime.cli.receipt",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="conclave", description="Confidential distributed LLM inference.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command group not present in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except ConclaveError as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.to_json()))
        else:
            print(f"conclave: error [{exc.reason}]: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("conclave: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
