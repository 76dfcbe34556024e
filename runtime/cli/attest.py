"""`conclave attest inspect|verify`: look at and check TEE evidence from a file.

    conclave attest inspect FILE [--tee tdx|snp|nvgpu|sim] [--json]
    conclave attest verify FILE [--tee ...] [--certs FILE ...] [--collateral FILE_OR_DIR]
                                [--at RFC3339] [--policy FILE] [--report-data HEX] [--nonce HEX] [--json]
    conclave attest verify EVIDENCE --tee nvgpu --certs CHAIN --nonce HEX --rim FILE [--rim FILE ...]

verify runs parse -> verify (-> binding with --report-data) (-> policy with --policy). Without
--policy it verifies only. --json prints exactly one object:
    {"ok", "tee", "reason", "claims", "violations", "steps"}
Exit codes: 0 accepted, 2 verification failed, 4 policy violated, 5 malformed input, 1 usage.

--certs: PEM bundles or DER files, any number, any order (vendor chain pieces, VCEK/VLEK, ...).
For simulated evidence (--tee sim) --certs supplies the TRUSTED SIMULATED ROOT(S): simulated
evidence has no built-in root, so without --certs it never verifies.
--rim (nvgpu): NVIDIA RIM swidtags (files or directories). Every RIM's signature and chain to
NVIDIA's pinned RIM root must hold at --at (rim_invalid), each GPU needs the driver and VBIOS
RIM of its versions (rim_missing), and every active measurement must match (rim_mismatch; the
JSON then carries "rim": {"mismatched_indices": [...], "mismatches": [...]}, SPDM numbering).
--at: the verification time (default: now; the only place that reads the clock). Real vectors
must be verified at their recorded time.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from conclave.runtime import attestation
from conclave.runtime.attestation import binding, core
from conclave.runtime.attestation.core import Step, TeeType
from conclave.runtime.errors import ConclaveError, ExitCode, UsageError

MAX_INPUT_BYTES = 16 * 1024 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    attest = subparsers.add_parser("attest", help="inspect and verify TEE attestation evidence")
    sub = attest.add_subparsers(dest="attest_command", required=True, metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", metavar="FILE", help="evidence file ('-' for stdin)")
        p.add_argument("--tee", choices=[t.value for t in TeeType],
                       help="evidence format (default: detected from the bytes)")
        p.add_argument("--json", action="store_true", help="print one JSON object")

    inspect = sub.add_parser("inspect", help="parse evidence and print its claims (no verification)")
    common(inspect)
    inspect.set_defaults(func=run_inspect)

    verify = sub.add_parser("verify", help="verify evidence (and optionally a policy and a binding)")
    common(verify)
    verify.add_argument("--certs", nargs="+", action="extend", default=[], metavar="FILE",
                        help="certificate files (PEM bundles or DER, any order); for sim: the "
                             "trusted simulated root(s)")
    verify.add_argument("--collateral", metavar="FILE_OR_DIR",
                        help="format collateral (TDX: TCB info/QE identity/CRLs; SNP: CRL)")
    verify.add_argument("--at", metavar="RFC3339", help="verification time (default: now)")
    verify.add_argument("--policy", metavar="FILE", help="policy (YAML or JSON) to validate against")
    verify.add_argument("--report-data", metavar="HEX",
                        help="expected REPORT_DATA (64 bytes; nvgpu: the 32-byte nonce)")
    verify.add_argument("--nonce", metavar="HEX", help="expected GPU nonce (nvgpu, 32 bytes)")
    verify.add_argument("--rim", action="append", default=[], metavar="FILE",
                        help="nvgpu: NVIDIA RIM swidtag file or directory (repeatable)")
    verify.add_argument("--unsafe-rim-root", metavar="FILE",
                        help="nvgpu: trust this TEST RIM root instead of NVIDIA's pinned one "
                             "(emulated GPUs only; the result notes it)")
    verify.set_defaults(func=run_verify)


# ------------------------------------------------------------------------------ input helpers

def _read(path: str) -> bytes:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with open(path, "rb") as fh:
                data = fh.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise core.MalformedEvidence(f"{path} is larger than {MAX_INPUT_BYTES} bytes")
    return data


def parse_hex(value: str, what: str, *, lengths: tuple[int, ...]) -> bytes:
    text = value.strip().lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{what} is not hex") from None
    if len(raw) not in lengths:
        raise UsageError(f"{what} must be {' or '.join(map(str, lengths))} bytes, got {len(raw)}")
    return raw


def parse_time(value: str | None) -> datetime:
    """RFC 3339 with an explicit offset (Z or +hh:mm) -> aware UTC; None -> now."""
    if value is None:
        return datetime.now(timezone.utc)
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at {value!r} is not RFC 3339 (e.g. 2025-07-19T10:00:34Z)") from None
    if dt.tzinfo is None:
        raise UsageError("--at needs a time zone offset (Z or +hh:mm)")
    return dt.astimezone(timezone.utc)


def load_certificates(paths: list[str]) -> list[x509.Certificate]:
    """Every certificate in every file: PEM bundles are split, DER files hold one certificate."""
    out: list[x509.Certificate] = []
    for path in paths:
        data = _read(path)
        # AMD VCEK/VLEK certificates carry serial number 0 (RFC 5280 says positive). We load them
        # deliberately; the SNP verifier checks them against AMD's pinned chain.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            try:
                if b"-----BEGIN" in data:
                    certs = x509.load_pem_x509_certificates(data)
                else:
                    certs = [x509.load_der_x509_certificate(data)]
            except ValueError:
                raise core.MalformedEvidence(f"{path}: not a PEM or DER certificate") from None
        out.extend(certs)
    return out


# ------------------------------------------------------------------------------ output

def _result(*, ok: bool, tee: TeeType | None, reason: str | None, claims: dict | None,
            violations: list | None = None, steps: list[Step] | tuple[Step, ...] = ()) -> dict:
    return {
        "ok": ok,
        "tee": str(tee) if tee is not None else None,
        "reason": reason,
        "claims": core.claims_to_json(claims or {}),
        "violations": [v.to_json() for v in (violations or [])],
        "steps": [s.to_json() for s in steps],
    }


def _emit(result: dict, as_json: bool, *, message: str | None = None,
          accepted: str = "ACCEPTED") -> None:
    if as_json:
        print(json.dumps(result, sort_keys=False))
        return
    verdict = accepted if result["ok"] else f"REJECTED [{result['reason']}]"
    print(f"tee: {result['tee'] or 'unknown'}")
    print(f"result: {verdict}")
    if message:
        print(f"message: {message}")
    for step in result["steps"]:
        print(f"  {'ok  ' if step['ok'] else 'FAIL'} {step['step']}")
    for v in result["violations"]:
        print(f"  violation [{v['reason']}] {v['field']}: {v['message']}")
    if result["claims"]:
        print("claims:")
        for key, value in result["claims"].items():
            print(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def _fail(exc: ConclaveError, args: argparse.Namespace, tee: TeeType | None,
          claims: dict | None, steps: list[Step] | tuple[Step, ...] = ()) -> int:
    violations = getattr(exc, "violations", None)
    steps = list(getattr(exc, "steps", None) or steps)
    result = _result(ok=False, tee=tee, reason=exc.reason, claims=claims, violations=violations, steps=steps)
    mismatches = getattr(exc, "mismatches", None)
    if mismatches is not None:  # nvgpu_rim.RimMismatch
        result["rim"] = {"mismatched_indices": sorted({m.spdm_index for m in mismatches}),
                         "mismatches": [m.to_json() for m in mismatches]}
    _emit(result, args.json, message=exc.message)
    if not args.json:
        print(f"conclave: error [{exc.reason}]: {exc.message}", file=sys.stderr)
    return int(exc.exit_code)


# ------------------------------------------------------------------------------ commands

def run_inspect(args: argparse.Namespace) -> int:
    tee: TeeType | None = TeeType(args.tee) if args.tee else None
    try:
        data = _read(args.file)
        tee, parsed = attestation.parse(data, tee)
        claims = attestation.claims(tee, parsed)
    except ConclaveError as exc:
        return _fail(exc, args, tee, None)
    _emit(_result(ok=True, tee=tee, reason=None, claims=claims), args.json,
          accepted="PARSED (structure only, NOT verified)")
    return int(ExitCode.OK)


def run_verify(args: argparse.Namespace) -> int:
    tee: TeeType | None = TeeType(args.tee) if args.tee else None
    claims: dict[str, Any] | None = None
    steps: list[Step] = []
    try:
        at = parse_time(args.at)
        expected_rd = (parse_hex(args.report_data, "--report-data", lengths=(64, 32))
                       if args.report_data else None)
        nonce = parse_hex(args.nonce, "--nonce", lengths=(32,)) if args.nonce else None
        policy = None
        if args.policy:
            from conclave.runtime.attestation.policy import Policy
            policy = Policy.load(args.policy)
        data = _read(args.file)
        certs = load_certificates(args.certs)

        tee, parsed = attestation.parse(data, tee)
        claims = attestation.claims(tee, parsed)
        if nonce is not None and tee != TeeType.NVGPU:
            raise UsageError("--nonce applies to nvgpu evidence; use --report-data for "
                             f"{tee.value}")
        if args.rim and tee != TeeType.NVGPU:
            raise UsageError(f"--rim applies to nvgpu evidence, not {tee.value}")
        if args.rim and args.collateral:
            raise UsageError("give RIMs with --rim or --collateral, not both")
        if args.rim:
            from conclave.runtime.attestation import nvgpu_rim
            collateral = nvgpu_rim.load_rims([Path(p) for p in args.rim])
        else:
            collateral = (attestation.load_collateral(tee, Path(args.collateral))
                          if args.collateral else None)
        # Simulated evidence has no vendor root: the roots come only from --certs.
        trusted_roots = certs if tee == TeeType.SIM else None
        module = attestation.format_module(tee)
        extra: dict[str, Any] = {}
        if args.unsafe_rim_root:
            if not args.rim:
                raise UsageError("--unsafe-rim-root needs --rim")
            extra["rim_roots"] = load_certificates([args.unsafe_rim_root])
        verified = module.verify(parsed, at=at, certs=tuple(certs), collateral=collateral,
                                 nonce=nonce, trusted_roots=trusted_roots, **extra)
        claims = dict(verified.claims)
        if verified.tcb_status is not None:
            claims["tcb_status"] = verified.tcb_status
        steps = list(verified.steps)

        if expected_rd is not None:
            try:
                binding.check_binding(verified, expected_rd)
            except core.VerificationFailed as exc:
                exc.steps = steps + [Step("binding.report_data", False)]
                raise
            steps.append(Step("binding.report_data", True))

        if policy is not None:
            from conclave.runtime.attestation.policy import validate
            try:
                validate(verified, policy)
            except core.PolicyViolated as exc:
                exc.steps = steps + [Step("policy.validate", False)]
                raise
            steps.append(Step("policy.validate", True))
    except ConclaveError as exc:
        return _fail(exc, args, tee, claims, steps)

    notes = list(verified.notes)
    if args.unsafe_rim_root:
        notes.append(f"RIMs checked against the TEST RIM root {args.unsafe_rim_root}, not NVIDIA's")
    result = _result(ok=True, tee=tee, reason=None, claims=claims, steps=steps)
    result["revocation_checked"] = verified.revocation_checked
    result["collateral_age_s"] = verified.collateral_age_s   # None: no dated collateral used
    _emit(result, args.json)
    if not args.json:
        if verified.simulated:
            print("note: SIMULATED evidence (no hardware root of trust)")
        print(f"revocation checked: {'yes' if verified.revocation_checked else 'NO'}")
        for note in notes:
            print(f"note: {note}")
    return int(ExitCode.OK)


__all__ = ["register", "run_inspect", "run_verify", "load_certificates", "parse_time", "parse_hex"]
