"""Generate the NVIDIA GPU test vectors in this folder (a test CA shaped like NVIDIA's).

Run:  .venv/bin/python tests/data/nvgpu/generate_nvgpu_vectors.py [OUTPUT_DIR]

The builders live in conclave.runtime.attestation.emulated.nvgpu_build (shared with local mode).

Why: the real vectors (../shared/vectors/nvgpu) are all valid; each verification step needs a
vector that is valid except for exactly one defect, and those can only be signed with keys we
hold. The chain copies the shape of NVIDIA's: root "Device Identity CA" -> "GH100 Identity" ->
"GH100 Provisioner ICA 1" -> per-chip "GSP BROM" -> per-boot "GSP FMC LF" leaf (P-384,
ECDSA-SHA384, DICE FWID extension 2.23.133.5.4.1 and NVIDIA's device-id SAN). The evidence is
an SPDM 1.1 GET_MEASUREMENTS request || MEASUREMENTS response signed by the leaf key.

Private keys live only in memory while this runs; nothing secret is written. Outputs are
described in PROVENANCE.md and expected.json (written here too).
"""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

# The issuer side (PKI shaped like NVIDIA's, SPDM evidence) lives in the runtime, where local mode's
# emulated GPUs use it; this script only assembles the vector set from it.
from conclave.runtime.attestation.emulated.nvgpu_build import (  # noqa: F401  (re-exported for tests)
    EXPIRED_NOT_AFTER, FWID, NONCE, NOT_AFTER, NOT_BEFORE, OTHER_FWID, OTHER_NONCE, VERIFY_AT, TestDevice, TestPki,
    _cert, _key, _pem, build_evidence, make_device, make_pki, measurement_values, nvidia_dice_extension)


# --- the vector set ------------------------------------------------------------------------

def _case(evidence: str, chain: str, outcome: str, *, step: str | None = None, nonce: bytes = NONCE,
          why: str) -> dict:
    return {"evidence": evidence, "chain": chain, "nonce": nonce.hex(), "outcome": outcome,
            "failed_step": step, "why": why}


def generate(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    pki = make_pki()
    other_pki = make_pki("Conclave Test Device Identity CA")  # same names, different keys
    device = make_device(pki, "4143000000000001")
    device2 = make_device(pki, "4143000000000002")
    expired = TestDevice(device.brom_key, device.brom, device.leaf_key,
                         _cert(device.leaf.subject, device.leaf_key, device.brom.subject, device.brom_key,
                               ca=False, leaf_fwid=FWID, not_after=EXPIRED_NOT_AFTER, serial=301))
    brom_not_ca = make_device(pki, "4143000000000003", brom_ca=False)
    untrusted = make_device(other_pki, "4143000000000004")
    stranger = _key()

    files: dict[str, bytes] = {
        "test_root.pem": _pem(pki.root),
        "chain.pem": _pem(*device.chain(pki)),
        "evidence.bin": build_evidence(device.leaf_key),
        "evidence_trailing_byte.bin": build_evidence(device.leaf_key, trailing=b"\x00"),
        "evidence_no_fwid.bin": build_evidence(device.leaf_key, fwid=None),
        "neg_parse_record_length.bin": build_evidence(device.leaf_key, record_len_delta=1),
        "neg_chain_untrusted_root.pem": _pem(*untrusted.chain(other_pki)),
        "neg_chain_untrusted_root.bin": build_evidence(untrusted.leaf_key),
        "neg_chain_expired_leaf.pem": _pem(*expired.chain(pki)),
        "neg_chain_missing_intermediate.pem": _pem(device.leaf, device.brom, pki.identity, pki.root),
        "neg_chain_no_leaf.pem": _pem(device.brom, pki.ica, pki.identity, pki.root),
        "neg_chain_brom_not_ca.pem": _pem(*brom_not_ca.chain(pki)),
        "neg_chain_brom_not_ca.bin": build_evidence(brom_not_ca.leaf_key),
        "neg_signature_wrong_key.bin": build_evidence(stranger),
        "neg_fwid_mismatch.bin": build_evidence(device.leaf_key, fwid=OTHER_FWID),
        "neg_nonce_other.bin": build_evidence(device.leaf_key, nonce=OTHER_NONCE),
    }
    bundle = [{"arch": "HOPPER", "nonce": NONCE.hex(), "version": "1.0",
               "evidence": base64.b64encode(build_evidence(d.leaf_key)).decode(),
               "certificate": base64.b64encode(_pem(*d.chain(pki))).decode()}
              for d in (device, device2)]
    files["evidence_bundle.json"] = json.dumps(bundle, indent=1).encode()
    bad_bundle = [dict(bundle[0]), dict(bundle[1])]
    bad_bundle[1]["evidence"] = base64.b64encode(build_evidence(stranger)).decode()
    files["neg_bundle_second_signature.json"] = json.dumps(bad_bundle, indent=1).encode()

    cases = {
        "valid": _case("evidence.bin", "chain.pem", "ok", why="all steps pass"),
        "valid_trailing_byte": _case("evidence_trailing_byte.bin", "chain.pem", "ok",
                                     why="one unsigned byte after the signature is ignored"),
        "valid_no_fwid": _case("evidence_no_fwid.bin", "chain.pem", "ok",
                               why="firmware without an FWID: comparison skipped with a note (nvtrust)"),
        "valid_bundle": _case("evidence_bundle.json", "", "ok", why="SDK JSON list, two GPUs, chains inside"),
        "parse_record_length": _case("neg_parse_record_length.bin", "chain.pem", "malformed",
                                     step="nvgpu.01.parse",
                                     why="MeasurementRecordLength one byte too long (signed correctly)"),
        "chain_untrusted_root": _case("neg_chain_untrusted_root.bin", "neg_chain_untrusted_root.pem",
                                      "chain_untrusted", step="nvgpu.02.cert_chain",
                                      why="a complete chain to another root with the same names"),
        "chain_expired_leaf": _case("evidence.bin", "neg_chain_expired_leaf.pem", "cert_expired",
                                    step="nvgpu.02.cert_chain",
                                    why="same leaf key, certificate expired 2026-01-01"),
        "chain_missing_intermediate": _case("evidence.bin", "neg_chain_missing_intermediate.pem",
                                            "chain_untrusted", step="nvgpu.02.cert_chain",
                                            why="the Provisioner ICA is left out"),
        "chain_no_leaf": _case("evidence.bin", "neg_chain_no_leaf.pem", "certs_missing",
                               step="nvgpu.02.cert_chain", why="the FMC leaf is left out"),
        "chain_brom_not_ca": _case("neg_chain_brom_not_ca.bin", "neg_chain_brom_not_ca.pem",
                                   "chain_untrusted", step="nvgpu.02.cert_chain",
                                   why="the BROM certificate that signs the leaf is not a CA"),
        "signature_wrong_key": _case("neg_signature_wrong_key.bin", "chain.pem", "signature_invalid",
                                     step="nvgpu.03.signature", why="signed by a key the leaf does not hold"),
        "fwid_mismatch": _case("neg_fwid_mismatch.bin", "chain.pem", "chain_untrusted", step="nvgpu.04.fwid",
                               why="reported FWID differs from the one certified in the leaf"),
        "nonce_mismatch": _case("neg_nonce_other.bin", "chain.pem", "nonce_mismatch", step="nvgpu.05.nonce",
                                why="the GPU answered another nonce"),
        "bundle_second_signature": _case("neg_bundle_second_signature.json", "", "signature_invalid",
                                         step="nvgpu.03.signature[1]",
                                         why="second device of a bundle signed by a stranger key"),
    }
    expected = {"verification_time": VERIFY_AT, "trusted_root": "test_root.pem", "nonce": NONCE.hex(),
                "fwid": FWID.hex(), "measurements": {str(k): v.hex() for k, v in measurement_values().items()},
                "driver_version": "550.90.07", "vbios_version": "96.00.9f.00.01", "cases": cases}
    files["expected.json"] = json.dumps(expected, indent=1, sort_keys=True).encode() + b"\n"
    for name, data in files.items():
        (out / name).write_bytes(data)
    return expected


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    generate(target)
    print(f"wrote NVIDIA test vectors to {target}")
