"""`conclave measure`: expected launch measurements of a CVM image, as a policy fragment.

    conclave measure tdx --firmware OVMF.fd [--ccel-table T --ccel-data D] [--page-order ...]
    conclave measure snp --ovmf OVMF.fd --vcpus N --vcpu-type EPYC-Milan
                         [--kernel K --initrd I --append CMDLINE] [--vmm qemu|ec2|gce]

Output: the attestation-policy fragment (tdx.mr_td/rtmr0..3 or snp.measurement) in JSON or
YAML, on stdout or in --out; --json prints {"ok": true, "fragment": ...}. Exit 1 for usage
errors, 5 for malformed firmware or event logs (the CLI funnel's fixed codes).
RTMRs come from replaying the event log of a reference boot of the image (CCEL table + data
as read from /sys/firmware/acpi/tables/CCEL and .../data/CCEL inside the reference TD).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from conclave.runtime.errors import ConclaveError, UsageError
from conclave.runtime.measure import ccel, fragment, snp, tdvf


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("measure", help="compute expected launch measurements of an image")
    sub = p.add_subparsers(dest="measure_command", required=True, metavar="TEE")

    t = sub.add_parser("tdx", help="TDX MRTD from TD firmware, RTMRs from a CC event log")
    t.add_argument("--firmware", type=Path, help="TDVF / OVMF IntelTdx firmware image")
    t.add_argument("--page-order", choices=tdvf.PAGE_ORDERS, default="single-pass",
                   help="how the host adds firmware pages (single-pass: current KVM)")
    t.add_argument("--ccel-table", type=Path, help="ACPI CCEL table of a reference boot")
    t.add_argument("--ccel-data", type=Path, help="CC event log area of a reference boot")
    _common(t)
    t.set_defaults(func=_cmd_tdx)

    e = sub.add_parser("engine", help="digest of the installed inference engine (the manifest's engine_digest)")
    e.set_defaults(func=_cmd_engine)

    s = sub.add_parser("snp", help="SEV-SNP launch digest (sev-snp-measure)")
    s.add_argument("--ovmf", type=Path, required=True, help="OVMF AmdSev firmware image")
    s.add_argument("--vcpus", type=int, required=True)
    who = s.add_mutually_exclusive_group(required=True)
    who.add_argument("--vcpu-type", help="QEMU CPU model, e.g. EPYC-Milan, EPYC-Genoa")
    who.add_argument("--vcpu-sig", type=lambda v: int(v, 0), help="CPUID signature (int)")
    s.add_argument("--kernel", type=Path)
    s.add_argument("--initrd", type=Path)
    s.add_argument("--append", help="kernel command line (measured direct boot)")
    s.add_argument("--vmm", choices=snp.VMM_TYPES, default="qemu")
    s.add_argument("--guest-features", type=lambda v: int(v, 0),
                   default=snp.DEFAULT_GUEST_FEATURES, help="SEV_FEATURES (default 0x1)")
    _common(s)
    s.set_defaults(func=_cmd_snp)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("json", "yaml"), default="json",
                   help="fragment format (default json)")
    p.add_argument("--out", type=Path, help="write the fragment here instead of stdout")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


def _emit(args, frag: dict) -> int:
    text = fragment.render(frag, args.format)
    if args.out:
        args.out.write_text(text)
    if args.json:
        print(json.dumps({"ok": True, "fragment": frag,
                          "out": str(args.out) if args.out else None}))
    elif not args.out:
        print(text, end="")
    return 0


def _cmd_tdx(args) -> int:
    if args.firmware is None and args.ccel_table is None and args.ccel_data is None:
        raise UsageError("give --firmware and/or --ccel-table with --ccel-data")
    if (args.ccel_table is None) != (args.ccel_data is None):
        raise UsageError("--ccel-table and --ccel-data go together")
    mr_td = None
    if args.firmware is not None:
        mr_td = tdvf.compute_mrtd(_read(args.firmware, "firmware"), page_order=args.page_order)
    rtmrs = None
    if args.ccel_table is not None:
        rtmrs = ccel.rtmrs_from_ccel(_read(args.ccel_table, "CCEL table"),
                                     _read(args.ccel_data, "CCEL data"))
    return _emit(args, fragment.tdx_fragment(mr_td, rtmrs))


def _cmd_snp(args) -> int:
    inputs = snp.SnpInputs(ovmf=args.ovmf, vcpus=args.vcpus, vcpu_type=args.vcpu_type,
                           vcpu_sig=args.vcpu_sig, kernel=args.kernel, initrd=args.initrd,
                           append=args.append, vmm=args.vmm, guest_features=args.guest_features)
    try:
        digest = snp.launch_digest(inputs)
    except ConclaveError as exc:
        if exc.reason == "usage":
            raise UsageError(exc.message) from None
        raise
    return _emit(args, fragment.snp_fragment(digest))


def _cmd_engine(args) -> int:
    """SHA-256 of the installed vLLM distribution's file list (RECORD): what this machine runs."""
    from conclave.runtime.measure.engine import engine_digest
    print(engine_digest())
    return 0
