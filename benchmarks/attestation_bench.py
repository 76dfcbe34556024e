"""Verification latency per evidence format, with collateral loaded once (cached), on real vectors.

    .venv/bin/python benchmarks/attestation_bench.py [--repeat 200] [--json]

Measures parse+verify of one piece of evidence (what a node does per peer admission, minus the
network), the same with the parse result reused (verify only), and policy validation + binding
check. Reports median and p90 in milliseconds. Needs ../shared/vectors (CONCLAVE_VECTORS).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "attestation"))

from conclave.runtime import attestation, config  # noqa: E402
from conclave.runtime.attestation import binding  # noqa: E402
from conclave.runtime.attestation.policy import Policy, validate  # noqa: E402

from fuzz_support import seeds  # noqa: E402


def _time(fn, repeat: int) -> dict:
    fn()  # warm-up (imports, caches)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 3),
            "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3), "n": repeat}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    vectors = config.vectors_dir()
    if not vectors.is_dir():
        print(f"vectors folder {vectors} not found (set CONCLAVE_VECTORS)", file=sys.stderr)
        return 1
    wanted = {"tdx-v4-uptodate", "snp-go-sev-guest-milan-v2", "nvgpu-h100", "nvgpu-ppcie-json", "sim"}
    rows = []
    for seed in seeds(vectors):
        if seed.name not in wanted:
            continue
        module = attestation.format_module(seed.tee)
        parsed = module.parse(seed.data)
        kwargs = dict(at=seed.at, certs=seed.certs, collateral=seed.collateral, nonce=seed.nonce,
                      trusted_roots=seed.trusted_roots)
        verified = module.verify(parsed, **kwargs)
        row = {"format": seed.name, "tee": seed.tee.value, "bytes": len(seed.data),
               "tcb_status": verified.tcb_status, "revocation_checked": verified.revocation_checked,
               "parse_verify": _time(lambda: module.verify(module.parse(seed.data), **kwargs), args.repeat),
               "verify_only": _time(lambda: module.verify(parsed, **kwargs), args.repeat)}
        policy_doc = {"production": seed.tee.value != "sim", "allowed_tee": [seed.tee.value]}
        if seed.tee.value == "sim":
            policy_doc.update(unsafe_allow_simulated=True, sim={"measurement": [verified.claims["measurement"].hex()]})
        elif seed.tee.value == "tdx":
            policy_doc["tdx"] = {"mr_td": [verified.claims["mr_td"].hex()], "xfam": [verified.claims["xfam"].hex()]}
        elif seed.tee.value == "snp":
            policy_doc["snp"] = {"measurement": [verified.claims["measurement"].hex()],
                                 "min_tcb": dict(verified.claims["reported_tcb"]),
                                 "allowed_vmpl": [verified.claims["vmpl"]]}
        else:
            policy_doc["nvgpu"] = {"driver_versions": [verified.claims["driver_version"]],
                                   "measurements": {str(i): [bytes(v).hex()] for i, v in
                                                    verified.claims["measurements"].items()}}
        policy = Policy.from_dict(policy_doc)

        def appraise():
            try:
                validate(verified, policy)
            except attestation.PolicyViolated:
                pass  # e.g. the debug-mode SNP sample; the cost is what we measure
            binding.check_binding(verified, verified.report_data)
        row["validate_and_binding"] = _time(appraise, args.repeat)
        rows.append(row)
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": __import__("os").cpu_count(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
    else:
        print(f"# {meta}")
        print(f"{'evidence':28} {'bytes':>6} {'parse+verify med/p90 ms':>24} {'verify med/p90 ms':>20} "
              f"{'policy+binding med ms':>22}")
        for r in rows:
            pv, v, a = r["parse_verify"], r["verify_only"], r["validate_and_binding"]
            print(f"{r['format']:28} {r['bytes']:>6} {pv['median_ms']:>12.3f} / {pv['p90_ms']:<9.3f} "
                  f"{v['median_ms']:>9.3f} / {v['p90_ms']:<8.3f} {a['median_ms']:>12.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
