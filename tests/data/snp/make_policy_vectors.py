#!/usr/bin/env python3
"""Generates tests/data/snp/policy/: genuine-looking SEV-SNP reports (signed by their own test
hierarchy, shaped like AMD's, built with make_vectors.py's helpers) that verify cleanly but carry
one appraisal-policy defect each, where no public vector has that defect (see PROVENANCE.md).

Run from the repository root:  .venv/bin/python tests/data/snp/make_policy_vectors.py
Keys live only in memory while the script runs; re-running replaces every file consistently.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

HERE = Path(__file__).resolve().parent
OUT = HERE / "policy"
POLICY_BASE = 0x30000           # ABI 0.0, SMT allowed, reserved bit 17 set
MIGRATE_MA = 1 << 18            # guest policy bit: a migration agent may be associated


def _generator():
    spec = importlib.util.spec_from_file_location("conclave_snp_make_vectors", HERE / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def main() -> None:
    mv = _generator()
    utc = mv.utc
    ark_key, ask_key = mv.rsa4096(), mv.rsa4096()
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark = mv.cert("ARK-Milan", "ARK-Milan", ark_key.public_key(), ark_key, 0x50000, utc(2025, 1, 1),
                  utc(2050, 1, 1), ca=True)
    ask = mv.cert("SEV-Milan", "ARK-Milan", ask_key.public_key(), ark_key, 0x50001, utc(2025, 1, 1),
                  utc(2050, 1, 1), ca=True)
    tcb = {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}
    hwid = bytes(range(0x40, 0x80))
    vcek = mv.cert("SEV-VCEK", "SEV-Milan", vcek_key.public_key(), ask_key, 1, utc(2025, 6, 1),
                   utc(2032, 6, 1), mv.ek_extensions("Milan-B0", tcb, hwid))

    def report(**over) -> bytes:
        kw = dict(version=2, product="milan", tcb=tcb, chip_id=hwid, signer_info=0, key=vcek_key,
                  policy=POLICY_BASE)
        kw.update(over)
        return mv.report(**kw)

    crl = (x509.CertificateRevocationListBuilder().issuer_name(mv.name("ARK-Milan"))
           .last_update(utc(2026, 1, 1)).next_update(utc(2026, 2, 1))
           .sign(ark_key, hashes.SHA384(), rsa_padding=mv.PSS))

    mv.write(OUT, {
        "ark.pem": mv.pem(ark), "cert_chain.pem": mv.pem(ask) + mv.pem(ark), "vcek.der": mv.der(vcek),
        "crl.der": mv.der(crl),
        "report_ok.bin": report(),
        "report_migrate_ma.bin": report(policy=POLICY_BASE | MIGRATE_MA),
        "report_vmpl2.bin": report(vmpl=2),
    })
    print(f"wrote SNP policy vectors under {OUT}")


if __name__ == "__main__":
    main()
