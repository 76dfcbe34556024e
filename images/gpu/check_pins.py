#!/usr/bin/env python3
"""Refuse to build the GPU node image from anything not pinned.

Why: the deployment manifest pins the image digest and the CVM measurements; an image built
from a moving tag, or from Python packages without hashes, could differ between two builds
of the "same" release and nobody could reproduce the measured bits.

Checks (each failure is printed with a reason, exit status 1):
1. digests.lock: every *_IMAGE has a *_DIGEST of the form sha256:<64 lowercase hex>.
2. requirements.lock: every requirement line carries at least one --hash=sha256:<64 hex>,
   and the file holds at least one requirement.
3. --print-build-args prints the `--build-arg` list for build.sh (only when 1 and 2 pass).

Stdlib only: it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
HASH_RE = re.compile(r"--hash=sha256:[0-9a-f]{64}\b")


def parse_lock(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"digests.lock line {n}: expected KEY=VALUE")
        key, value = line.split("=", 1)
        pins[key.strip()] = value.strip()
    return pins


def digest_problems(pins: dict[str, str]) -> list[str]:
    problems = []
    images = [k for k in pins if k.endswith("_IMAGE")]
    if not images:
        problems.append("unpinned_base: digests.lock names no base image")
    for key in images:
        digest_key = key[:-len("_IMAGE")] + "_DIGEST"
        digest = pins.get(digest_key, "")
        if not DIGEST_RE.match(digest):
            problems.append(f"unpinned_base: {digest_key} is {digest or 'empty'!s}, "
                            "expected sha256:<64 hex> from the release step")
        if "@" in pins[key]:
            problems.append(f"unpinned_base: {key} must be a name:tag, the digest goes in "
                            f"{digest_key}")
    return problems


def requirement_problems(text: str) -> list[str]:
    # Join continuation lines ("\" at the end) into one logical requirement.
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            if current:
                logical.append(current)
                current = ""
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
        else:
            logical.append(current + line)
            current = ""
    if current:
        logical.append(current)
    requirements = [r.strip() for r in logical if r.strip() and not r.strip().startswith("-")]
    if not requirements:
        return ["unhashed_requirements: requirements.lock holds no requirements "
                "(run the release step)"]
    return [f"unhashed_requirements: {r.split()[0]} has no --hash=sha256:..."
            for r in requirements if not HASH_RE.search(r)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digests", type=Path, default=HERE / "digests.lock")
    p.add_argument("--requirements", type=Path, default=HERE / "requirements.lock")
    p.add_argument("--print-build-args", action="store_true")
    args = p.parse_args(argv)
    try:
        pins = parse_lock(args.digests.read_text())
    except (OSError, ValueError) as exc:
        print(f"check_pins: malformed_lock: {exc}", file=sys.stderr)
        return 1
    problems = digest_problems(pins)
    try:
        problems += requirement_problems(args.requirements.read_text())
    except OSError as exc:
        problems.append(f"unhashed_requirements: cannot read {args.requirements}: {exc.strerror}")
    for problem in problems:
        print(f"check_pins: {problem}", file=sys.stderr)
    if problems:
        return 1
    if args.print_build_args:
        for key, value in sorted(pins.items()):
            print(f"--build-arg={key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
