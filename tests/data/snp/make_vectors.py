#!/usr/bin/env python3
"""Generates the SNP test vectors in this folder: a test CA shaped like AMD's and reports signed
by it, each negative vector valid except for exactly one defect (see PROVENANCE.md).

Run from the repository root:  .venv/bin/python tests/data/snp/make_vectors.py
Keys are generated in memory and discarded: only certificates, CRLs and reports are written,
so re-running replaces every file (and every key) consistently.

Shape (as AMD's KDS): ARK-<Product> (RSA-4096, self-signed, RSASSA-PSS SHA-384 salt 48)
  -> SEV-<Product> (ASK)       -> SEV-VCEK (ECDSA P-384, SPL + hwID extensions)
  -> SEV-VLEK-<Product> (ASVK) -> SEV-VLEK (ECDSA P-384, SPL extensions, no hwID)
Subjects use O="Conclave Test CA (not AMD)" so they can never be mistaken for AMD's.
The serialisation (certificates, extensions, reports, cert table) is shared with the emulated
SNP hardware: runtime/attestation/emulated/snp_build.py.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conclave.runtime.attestation.emulated import snp_build as sb

OUT = Path(__file__).resolve().parent
PSS = sb.PSS
VERIFY_AT = datetime(2026, 1, 15, tzinfo=timezone.utc)


def utc(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=timezone.utc)


name, ek_extensions, tcb_raw, report, cert_table = sb.name, sb.ek_extensions, sb.tcb_raw, sb.report, sb.cert_table
pem, der = sb.pem, sb.der


def cert(subject: str, issuer: str, public_key, signing_key, serial: int, nb: datetime, na: datetime,
         extensions: dict[str, bytes] | None = None, ca: bool = False) -> x509.Certificate:
    return sb.certificate(name(subject), name(issuer), public_key, signing_key, serial, nb, na, extensions, ca)


def write(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():
        (folder / fname).write_bytes(data)


def rsa4096() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def make_milan() -> None:
    P = "Milan"
    ark_key, ask_key, asvk_key, rogue_key = rsa4096(), rsa4096(), rsa4096(), rsa4096()
    vcek_key, vlek_key, other_ec = (ec.generate_private_key(ec.SECP384R1()) for _ in range(3))
    ark = cert(f"ARK-{P}", f"ARK-{P}", ark_key.public_key(), ark_key, 0x10000, utc(2025, 1, 1), utc(2050, 1, 1), ca=True)
    ask = cert(f"SEV-{P}", f"ARK-{P}", ask_key.public_key(), ark_key, 0x10001, utc(2025, 1, 1), utc(2050, 1, 1), ca=True)
    asvk = cert(f"SEV-VLEK-{P}", f"ARK-{P}", asvk_key.public_key(), ark_key, 0x10002, utc(2025, 1, 1), utc(2050, 1, 1), ca=True)
    tcb = {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}
    hwid = bytes(range(0x40, 0x80))
    vcek_ext = ek_extensions("Milan-B0", tcb, hwid)
    vcek = cert("SEV-VCEK", f"SEV-{P}", vcek_key.public_key(), ask_key, 1, utc(2025, 6, 1), utc(2032, 6, 1), vcek_ext)
    vlek = cert("SEV-VLEK", f"SEV-VLEK-{P}", vlek_key.public_key(), asvk_key, 2, utc(2025, 6, 1), utc(2026, 6, 1),
                ek_extensions("Milan", tcb, None, csp="CN=conclave-test-csp"))

    # Defective certificates (one defect each).
    ark_bad = bytearray(der(ark))
    ark_bad[-10] ^= 0x01  # inside the signature BIT STRING
    rogue_ark = cert(f"ARK-{P}", f"ARK-{P}", rogue_key.public_key(), rogue_key, 0x20000, utc(2025, 1, 1), utc(2050, 1, 1), ca=True)
    ask_badsig = cert(f"SEV-{P}", f"ARK-{P}", ask_key.public_key(), rogue_key, 0x10001, utc(2025, 1, 1), utc(2050, 1, 1), ca=True)
    ask_expired = cert(f"SEV-{P}", f"ARK-{P}", ask_key.public_key(), ark_key, 0x10003, utc(2025, 1, 1), utc(2025, 12, 31), ca=True)
    vcek_badsig = cert("SEV-VCEK", f"SEV-{P}", vcek_key.public_key(), rogue_key, 1, utc(2025, 6, 1), utc(2032, 6, 1), vcek_ext)
    vcek_expired = cert("SEV-VCEK", f"SEV-{P}", vcek_key.public_key(), ask_key, 3, utc(2025, 6, 1), utc(2025, 12, 31), vcek_ext)
    vcek_wrong_tcb = cert("SEV-VCEK", f"SEV-{P}", vcek_key.public_key(), ask_key, 4, utc(2025, 6, 1), utc(2032, 6, 1),
                          ek_extensions("Milan-B0", {**tcb, "microcode": 220}, hwid))
    vcek_wrong_hwid = cert("SEV-VCEK", f"SEV-{P}", vcek_key.public_key(), ask_key, 5, utc(2025, 6, 1), utc(2032, 6, 1),
                           ek_extensions("Milan-B0", tcb, bytes(reversed(hwid))))
    vcek_wrapped = cert("SEV-VCEK", f"SEV-{P}", vcek_key.public_key(), ask_key, 6, utc(2025, 6, 1), utc(2032, 6, 1),
                        ek_extensions("Milan-B0", tcb, hwid, wrap_hwid=True))
    vlek_under_ask = cert("SEV-VLEK", f"SEV-{P}", vlek_key.public_key(), ask_key, 7, utc(2025, 6, 1), utc(2026, 6, 1),
                          ek_extensions("Milan", tcb, None))

    def crl(revoked: list[int], key, last: datetime, nxt: datetime) -> bytes:
        b = (x509.CertificateRevocationListBuilder().issuer_name(name(f"ARK-{P}"))
             .last_update(last).next_update(nxt))
        for serial in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                          .revocation_date(utc(2025, 12, 1)).build())
        return der(b.sign(key, hashes.SHA384(), rsa_padding=PSS))

    milan = "milan"
    v2 = report(version=2, product=milan, tcb=tcb, chip_id=hwid, signer_info=0, key=vcek_key)
    v3_vlek = report(version=3, product=milan, tcb=tcb, chip_id=bytes(64), signer_info=0x4, key=vlek_key,
                     vmpl=1, cpuid=(0x19, 0x01, 0x01), current_tcb={**tcb, "microcode": 220})
    masked = report(version=3, product=milan, tcb=tcb, chip_id=bytes(64), signer_info=0x2, key=vcek_key,
                    cpuid=(0x19, 0x01, 0x01))
    badsig = report(version=2, product=milan, tcb=tcb, chip_id=hwid, signer_info=0, key=other_ec)
    algo2 = report(version=2, product=milan, tcb=tcb, chip_id=hwid, signer_info=0, key=vcek_key, sig_algo=2)
    extended = v2 + cert_table([("vcek", der(vcek)), ("ask", der(ask)), ("ark", der(ark))])

    write(OUT / "milan", {
        "ark.pem": pem(ark), "ask.pem": pem(ask), "asvk.pem": pem(asvk), "cert_chain.pem": pem(ask) + pem(ark),
        "vcek.der": der(vcek), "vlek.der": der(vlek),
        "report_vcek_v2.bin": v2, "report_vlek_v3.bin": v3_vlek, "report_vcek_v3_masked.bin": masked,
        "report_vcek_v2_extended.bin": extended,
        "crl.der": crl([], ark_key, utc(2026, 1, 1), utc(2026, 2, 1)),
        # defects
        "ark_badsig.der": bytes(ark_bad), "rogue_ark.pem": pem(rogue_ark),
        "ask_badsig.pem": pem(ask_badsig), "ask_expired.pem": pem(ask_expired),
        "crl_revokes_ask.der": crl([0x10001], ark_key, utc(2026, 1, 1), utc(2026, 2, 1)),
        "crl_badsig.der": crl([], rogue_key, utc(2026, 1, 1), utc(2026, 2, 1)),
        "crl_stale.der": crl([], ark_key, utc(2025, 11, 1), utc(2025, 12, 1)),
        "vcek_badsig.der": der(vcek_badsig), "vcek_expired.der": der(vcek_expired),
        "vcek_wrong_tcb.der": der(vcek_wrong_tcb), "vcek_wrong_hwid.der": der(vcek_wrong_hwid),
        "vcek_hwid_wrapped.der": der(vcek_wrapped), "vlek_under_ask.der": der(vlek_under_ask),
        "report_badsig.bin": badsig, "report_sigalgo2.bin": algo2,
    })


def make_turin() -> None:
    P = "Turin"
    ark_key, ask_key = rsa4096(), rsa4096()
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark = cert(f"ARK-{P}", f"ARK-{P}", ark_key.public_key(), ark_key, 0x30000, utc(2025, 1, 1), utc(2050, 1, 1), ca=True)
    ask = cert(f"SEV-{P}", f"ARK-{P}", ask_key.public_key(), ark_key, 0x30001, utc(2025, 1, 1), utc(2050, 1, 1), ca=True)
    tcb = {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9}
    hwid = bytes.fromhex("1e550a8ee5cf9f4d")  # 8-byte Turin hwID; CHIP_ID = hwID + 56 zero bytes
    vcek = cert("SEV-VCEK", f"SEV-{P}", vcek_key.public_key(), ask_key, 1, utc(2025, 6, 1), utc(2032, 6, 1),
                ek_extensions("Turin", tcb, hwid))
    vcek_wrong_fmc = cert("SEV-VCEK", f"SEV-{P}", vcek_key.public_key(), ask_key, 2, utc(2025, 6, 1), utc(2032, 6, 1),
                          ek_extensions("Turin", {**tcb, "fmc": 2}, hwid))
    v5 = report(version=5, product="turin", tcb=tcb, chip_id=hwid + bytes(56), signer_info=0, key=vcek_key,
                cpuid=(0x1A, 0x02, 0x01))
    write(OUT / "turin", {
        "ark.pem": pem(ark), "cert_chain.pem": pem(ask) + pem(ark), "vcek.der": der(vcek),
        "report_vcek_v5.bin": v5, "vcek_wrong_fmc.der": der(vcek_wrong_fmc),
    })


def make_genoa() -> None:
    """Genoa shares Milan's TCB layout; the product comes from CPUID (family 19h, model 11h)."""
    P = "Genoa"
    ark_key, ask_key = rsa4096(), rsa4096()
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark = cert(f"ARK-{P}", f"ARK-{P}", ark_key.public_key(), ark_key, 0x40000, utc(2025, 1, 1), utc(2050, 1, 1), ca=True)
    ask = cert(f"SEV-{P}", f"ARK-{P}", ask_key.public_key(), ark_key, 0x40001, utc(2025, 1, 1), utc(2050, 1, 1), ca=True)
    tcb = {"bootloader": 7, "tee": 0, "snp": 14, "microcode": 72}
    hwid = bytes(range(0x80, 0xC0))
    vcek = cert("SEV-VCEK", f"SEV-{P}", vcek_key.public_key(), ask_key, 1, utc(2025, 6, 1), utc(2032, 6, 1),
                ek_extensions("Genoa-B1", tcb, hwid, wrap_hwid=True))
    v3 = report(version=3, product="genoa", tcb=tcb, chip_id=hwid, signer_info=0, key=vcek_key,
                cpuid=(0x19, 0x11, 0x01))
    write(OUT / "genoa", {"ark.pem": pem(ark), "cert_chain.pem": pem(ask) + pem(ark), "vcek.der": der(vcek),
                          "report_vcek_v3.bin": v3})


if __name__ == "__main__":
    make_milan()
    make_genoa()
    make_turin()
    (OUT / "manifest.json").write_text(json.dumps({
        "verification_time": VERIFY_AT.isoformat().replace("+00:00", "Z"),
        "generator": "tests/data/snp/make_vectors.py",
    }, indent=1) + "\n")
    print(f"wrote SNP test vectors under {OUT}")
