"""Mutation fuzzing of every evidence format's parse() (and verify() on a sample), bounded in time.

    .venv/bin/python benchmarks/fuzz_evidence.py [--per-format 100000] [--budget 900] [--hang 2.0]
                                                 [--verify-every 20] [--seed 1] [--json]

For each format (tdx, snp, nvgpu, sim) it mutates the real vectors (../shared/vectors) and
signed simulated evidence, feeds each input to parse(), and every Nth input that parses to
verify(). A "crash" is any exception other than MalformedEvidence from parse or other than an
AttestationError from verify; a "hang" is one input taking longer than --hang seconds
(SIGALRM watchdog). Expected: 0 crashes, 0 hangs. Exits 1 when any were found.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "attestation"))

from conclave.runtime import attestation, config  # noqa: E402
from conclave.runtime.attestation import core  # noqa: E402
from conclave.runtime.attestation.core import TeeType  # noqa: E402

from fuzz_support import mutate, seeds  # noqa: E402


class Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise Hang()


def fuzz_format(tee: TeeType, pool, *, count: int, budget: float, hang: float, verify_every: int,
                rng: random.Random) -> dict:
    module = attestation.format_module(tee)
    stats = Counter()
    crashes: list[dict] = []
    slowest = 0.0
    start = time.monotonic()
    for i in range(count):
        if time.monotonic() - start > budget:
            stats["stopped_by_budget"] = 1
            break
        seed = pool[i % len(pool)] if i % 10 else rng.choice(pool)
        data = mutate(seed.data, rng)
        t0 = time.perf_counter()
        stage = "parse"
        signal.setitimer(signal.ITIMER_REAL, hang)
        try:
            parsed = module.parse(data)
            stats["parsed"] += 1
            if verify_every and stats["parsed"] % verify_every == 0 and seed.tee == tee:
                stage = "verify"
                stats["verified_attempts"] += 1
                try:
                    module.verify(parsed, at=seed.at, certs=seed.certs, collateral=seed.collateral,
                                  nonce=seed.nonce, trusted_roots=seed.trusted_roots)
                    stats["verified_ok"] += 1
                except core.AttestationError as exc:
                    stats[f"verify:{exc.reason}"] += 1
        except core.MalformedEvidence:
            stats["malformed"] += 1
        except Hang:
            stats["hangs"] += 1
            crashes.append({"kind": "hang", "stage": stage, "seed": seed.name, "input_hex": data[:4096].hex()})
        except Exception as exc:  # noqa: BLE001 - this is what we hunt
            stats["crashes"] += 1
            crashes.append({"kind": type(exc).__name__, "stage": stage, "seed": seed.name,
                            "trace": traceback.format_exc(limit=4), "input_hex": data[:4096].hex()})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        slowest = max(slowest, time.perf_counter() - t0)
        stats["inputs"] += 1
    elapsed = time.monotonic() - start
    return {"tee": tee.value, "inputs": stats["inputs"], "parsed": stats["parsed"],
            "malformed": stats["malformed"], "verify_attempts": stats["verified_attempts"],
            "verify_ok": stats["verified_ok"], "crashes": stats["crashes"], "hangs": stats["hangs"],
            "stopped_by_budget": bool(stats["stopped_by_budget"]), "seconds": round(elapsed, 1),
            "inputs_per_s": round(stats["inputs"] / elapsed) if elapsed else None,
            "slowest_input_ms": round(slowest * 1000, 2),
            "verify_reasons": {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("verify:")},
            "examples": crashes[:5]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-format", type=int, default=100_000)
    ap.add_argument("--budget", type=float, default=900.0, help="seconds per format (hard stop)")
    ap.add_argument("--hang", type=float, default=2.0, help="seconds before one input counts as a hang")
    ap.add_argument("--verify-every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--formats", default="tdx,snp,nvgpu,sim")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    vectors = config.vectors_dir()
    all_seeds = seeds(vectors if vectors.is_dir() else None)
    rng = random.Random(args.seed)
    signal.signal(signal.SIGALRM, _alarm)
    results = []
    for name in args.formats.split(","):
        tee = TeeType(name)
        pool = [s for s in all_seeds if s.tee == tee]
        if not pool:
            print(f"no seeds for {name} (vectors folder {vectors} missing?)", file=sys.stderr)
            return 1
        r = fuzz_format(tee, pool, count=args.per_format, budget=args.budget, hang=args.hang,
                        verify_every=args.verify_every, rng=rng)
        results.append(r)
        if not args.json:
            print(f"{r['tee']:6} inputs={r['inputs']:>7} parsed={r['parsed']:>7} malformed={r['malformed']:>7} "
                  f"verify={r['verify_attempts']:>5} (ok {r['verify_ok']}) crashes={r['crashes']} hangs={r['hangs']} "
                  f"{r['seconds']}s ({r['inputs_per_s']}/s, slowest {r['slowest_input_ms']} ms)"
                  + (" STOPPED BY BUDGET" if r["stopped_by_budget"] else ""), flush=True)
            for ex in r["examples"]:
                print(f"  {ex['kind']} in {ex['stage']} (seed {ex['seed']})\n{ex.get('trace', '')}")
    if args.json:
        print(json.dumps(results, indent=2))
    bad = sum(r["crashes"] + r["hangs"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
