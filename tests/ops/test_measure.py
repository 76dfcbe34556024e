"""conclave measure: known inputs with known outputs, plus one-defect negatives.

What each test proves is written on it. Summary:
- CCEL replay reproduces the RTMRs of a real TDX quote from its real event log (GCP COS 113):
  parsing and the RTMR extend rule are right end to end.
- MRTD: the TDVF parser reads Debian's real OVMF.fd (the ovmf package, IntelTdx metadata);
  the accumulation matches an independent, spec-shaped computation on a synthetic firmware.
  No public (firmware, MRTD) pair or independent MRTD implementation can be had from the
  registries this project reaches (searched again; see images/README.md): MRTD has NO
  real-world known-output test here.
- SNP: the OVMF part of sev-snp-measure's digest equals an independent PAGE_INFO chain written
  from the SNP ABI spec, on Debian's real OVMF.fd; the rest (VMSA, metadata pages) is the
  package's, checked only for sensitivity to its inputs.
"""
from __future__ import annotations

import hashlib
import json
import struct
import uuid
from pathlib import Path

import pytest

from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.tdx_quote import parse_quote
from conclave.runtime.cli import main as cli_main
from conclave.runtime.errors import ConclaveError
from conclave.runtime.measure import ccel, fragment, snp, tdvf

DEBIAN_OVMF = Path("/usr/share/ovmf/OVMF.fd")  # Debian package `ovmf` (an install-script dependency)


@pytest.fixture(scope="module")
def ovmf() -> bytes:
    if not DEBIAN_OVMF.is_file():
        pytest.fail(f"{DEBIAN_OVMF} missing: apt-get install ovmf (required test dependency)")
    return DEBIAN_OVMF.read_bytes()


@pytest.fixture(scope="module")
def ccel_vector(vectors_dir: Path) -> Path:
    return vectors_dir / "tdx" / "go-tdx-guest-gcp-cos113-ccel"


# ---------------------------------------------------------------- CCEL / RTMR ----------------
def test_ccel_replay_reproduces_real_quote_rtmrs(ccel_vector):
    """Known input/output: the GCP TD's event log replays to the RTMRs its signed quote carries."""
    quote = parse_quote((ccel_vector / "quote.bin").read_bytes())
    rtmrs = ccel.rtmrs_from_ccel((ccel_vector / "ccel_table.bin").read_bytes(),
                                 (ccel_vector / "ccel_data.bin").read_bytes())
    assert rtmrs == [quote.body.rtmr0, quote.body.rtmr1, quote.body.rtmr2, quote.body.rtmr3]
    assert quote.body.rtmr0 != bytes(48)  # the comparison is not between zero registers


def test_ccel_table_fields(ccel_vector):
    table = ccel.parse_ccel_table((ccel_vector / "ccel_table.bin").read_bytes())
    assert table.cc_type == ccel.CC_TYPE_TDX
    assert table.log_area_minimum_length == 262144


def test_tampered_event_digest_changes_replay(ccel_vector):
    """One-defect: flip one byte of the first extended event's SHA-384 digest."""
    data = bytearray((ccel_vector / "ccel_data.bin").read_bytes())
    table = (ccel_vector / "ccel_table.bin").read_bytes()
    good = ccel.rtmrs_from_ccel(table, bytes(data))
    events = ccel.parse_event_log(bytes(data))
    target = next(e for e in events if e.event_type != ccel.EV_NO_ACTION)
    digest = target.digests[ccel.TPM_ALG_SHA384]
    at = bytes(data).find(digest)
    data[at] ^= 0x01
    bad = ccel.rtmrs_from_ccel(table, bytes(data))
    assert bad[target.mr_index - 1] != good[target.mr_index - 1]


@pytest.mark.parametrize("defect", ["signature", "checksum", "cc_type", "short"])
def test_ccel_table_defects_are_malformed(ccel_vector, defect):
    raw = bytearray((ccel_vector / "ccel_table.bin").read_bytes())
    if defect == "signature":
        raw[0:4] = b"XXXX"
    elif defect == "checksum":
        raw[50] ^= 0xFF
    elif defect == "cc_type":
        raw[36] -= 1  # TDX (2) -> SEV (1)
        raw[9] = (raw[9] + 1) % 256  # keep the checksum valid: only the type is wrong
        assert ccel.parse_ccel_table(bytes(raw)).cc_type == 1
    else:
        raw = raw[:40]
    data = (ccel_vector / "ccel_data.bin").read_bytes()
    with pytest.raises(ConclaveError) as exc:
        ccel.rtmrs_from_ccel(bytes(raw), data)
    assert exc.value.reason == "event_log_malformed"


def test_event_log_without_spec_id_header_is_malformed():
    with pytest.raises(ConclaveError) as exc:
        ccel.parse_event_log(bytes(1024))
    assert exc.value.reason == "event_log_malformed"


def test_event_log_truncated_event_is_malformed(ccel_vector):
    data = (ccel_vector / "ccel_data.bin").read_bytes()
    events = ccel.parse_event_log(data)
    # cut the log in the middle of the last event's data
    end = data.find(events[-1].data) + len(events[-1].data) // 2 if events[-1].data else 200
    with pytest.raises(ConclaveError) as exc:
        ccel.parse_event_log(data[:end])
    assert exc.value.reason == "event_log_malformed"


# ---------------------------------------------------------------- TDVF / MRTD ----------------
def test_debian_ovmf_tdvf_metadata(ovmf):
    """Real firmware: the IntelTdx metadata of Debian's OVMF.fd parses into its known sections."""
    sections = tdvf.parse_tdvf_metadata(ovmf)
    types = [s.type for s in sections]
    assert tdvf.SectionType.BFV in types and tdvf.SectionType.CFV in types
    assert tdvf.SectionType.TD_HOB in types and tdvf.SectionType.TEMP_MEM in types
    bfv = next(s for s in sections if s.type == tdvf.SectionType.BFV)
    assert bfv.mr_extend and bfv.memory_address + bfv.memory_data_size == 1 << 32
    assert bfv.raw_data_size == bfv.memory_data_size
    assert [s for s in sections if s.mr_extend] == [bfv]
    mrtd = tdvf.compute_mrtd(ovmf)
    assert len(mrtd) == 48 and mrtd != tdvf.compute_mrtd(ovmf, page_order="two-pass")


def _synthetic_firmware(bfv: bytes, extra_sections: list[tuple] = ()) -> tuple[bytes, int]:
    """Firmware of len(bfv) + 8 KiB: BFV at the top of 4 GiB, TDVF metadata, GUIDed footer."""
    meta_page = bytearray(8192)
    sections = [(0, len(bfv), (1 << 32) - len(bfv), len(bfv), 0, 1), *extra_sections]
    desc = struct.pack("<4sIII", b"TDVF", 16 + 32 * len(sections), 1, len(sections))
    desc += b"".join(struct.pack("<IIQQII", *s) for s in sections)
    image_size = len(bfv) + len(meta_page)
    meta_at = len(bfv)  # descriptor placed right after the BFV bytes
    meta_page[0:len(desc)] = desc
    # GUIDed table: one TDX metadata offset entry, then the footer, then 32 bytes.
    entry = struct.pack("<I", image_size - meta_at) + struct.pack("<H", 22) \
        + tdvf.TDX_METADATA_OFFSET_GUID.bytes_le
    footer = struct.pack("<H", len(entry) + 18) + tdvf.TABLE_FOOTER_GUID.bytes_le
    tail = entry + footer + bytes(32)
    meta_page[-len(tail):] = tail
    return bytes(bfv) + bytes(meta_page), len(bfv)


def _spec_mrtd(pages: list[tuple[int, bytes | None]]) -> bytes:
    """Independent, literal transcription of TDH.MEM.PAGE.ADD / TDH.MR.EXTEND (single pass)."""
    stream = b""
    for gpa, content in pages:
        stream += b"MEM.PAGE.ADD" + b"\x00" * 4 + gpa.to_bytes(8, "little") + b"\x00" * 104
        if content is not None:
            for k in range(16):
                stream += b"MR.EXTEND" + b"\x00" * 7 + (gpa + 256 * k).to_bytes(8, "little")
                stream += b"\x00" * 104 + content[256 * k:256 * (k + 1)]
    return hashlib.sha384(stream).digest()


def test_mrtd_matches_spec_transcription_on_synthetic_firmware():
    bfv = bytes(range(256)) * 32  # two pages, distinct content per chunk
    bfv = bytes((b * 7 + i // 256) % 256 for i, b in enumerate(bfv))
    hob = (0, 0, 0x809000, 0x2000, 2, 0)  # TD_HOB: added, never extended
    aug = (0, 0, 0x900000, 0x1000, 3, 2)  # PAGE_AUG TEMP_MEM: neither added nor extended
    image, _ = _synthetic_firmware(bfv, [hob, aug])
    base = (1 << 32) - len(bfv)
    expected = _spec_mrtd([(base, bfv[:4096]), (base + 4096, bfv[4096:]),
                           (0x809000, None), (0x80A000, None)])
    assert tdvf.compute_mrtd(image) == expected


def test_mrtd_changes_with_measured_bytes_only():
    bfv = bytes(8192)
    image, bfv_len = _synthetic_firmware(bfv)
    base = tdvf.compute_mrtd(image)
    flipped_bfv = bytearray(image)
    flipped_bfv[100] ^= 1
    assert tdvf.compute_mrtd(bytes(flipped_bfv)) != base
    flipped_meta_pad = bytearray(image)
    flipped_meta_pad[bfv_len + 4000] ^= 1  # unmeasured padding in the metadata page
    assert tdvf.compute_mrtd(bytes(flipped_meta_pad)) == base


@pytest.mark.parametrize("defect", ["no_footer", "no_tdx_entry", "bad_signature", "unaligned"])
def test_tdvf_defects_are_malformed(defect):
    image, bfv_len = _synthetic_firmware(bytes(4096))
    raw = bytearray(image)
    if defect == "no_footer":
        raw[-48:-32] = bytes(16)
    elif defect == "no_tdx_entry":
        at = raw.find(tdvf.TDX_METADATA_OFFSET_GUID.bytes_le)
        raw[at:at + 16] = uuid.uuid4().bytes_le
    elif defect == "bad_signature":
        raw[bfv_len:bfv_len + 4] = b"XXXX"
    else:
        struct.pack_into("<Q", raw, bfv_len + 16 + 8, (1 << 32) - 4096 + 8)
    with pytest.raises(ConclaveError) as exc:
        tdvf.compute_mrtd(bytes(raw))
    assert exc.value.reason == "firmware_malformed"


# ---------------------------------------------------------------- SEV-SNP --------------------
def _spec_snp_ovmf_digest(image: bytes) -> bytes:
    """SNP ABI spec PAGE_INFO chain for PAGE_TYPE_NORMAL pages, written independently."""
    gpa = (1 << 32) - len(image)
    digest = bytes(48)
    for off in range(0, len(image), 4096):
        page_info = (digest + hashlib.sha384(image[off:off + 4096]).digest()
                     + struct.pack("<H", 0x70) + bytes([0x01, 0x00]) + bytes(4)
                     + struct.pack("<Q", gpa + off))
        assert len(page_info) == 0x70
        digest = hashlib.sha384(page_info).digest()
    return digest


def test_snp_ovmf_pages_match_independent_page_info_chain(ovmf):
    from sevsnpmeasure import guest

    assert guest.calc_snp_ovmf_hash(str(DEBIAN_OVMF)) == _spec_snp_ovmf_digest(ovmf)


def test_snp_launch_digest_depends_on_every_input():
    base = snp.SnpInputs(ovmf=DEBIAN_OVMF, vcpus=2, vcpu_type="EPYC-Milan")
    variants = {
        "base": base,
        "vcpus": snp.SnpInputs(ovmf=DEBIAN_OVMF, vcpus=3, vcpu_type="EPYC-Milan"),
        "type": snp.SnpInputs(ovmf=DEBIAN_OVMF, vcpus=2, vcpu_type="EPYC-Genoa"),
        "features": snp.SnpInputs(ovmf=DEBIAN_OVMF, vcpus=2, vcpu_type="EPYC-Milan",
                                  guest_features=0x21),
        "vmm": snp.SnpInputs(ovmf=DEBIAN_OVMF, vcpus=2, vcpu_type="EPYC-Milan", vmm="ec2"),
    }
    values = {name: snp.launch_digest(inputs) for name, inputs in variants.items()}
    assert len(set(values.values())) == len(values)
    assert snp.launch_digest(base) == values["base"]  # deterministic


def test_snp_kernel_hashes_need_an_amdsev_firmware(tmp_path):
    """Debian's OVMF.fd is not an AmdSev build: measured direct boot must be refused, not faked."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel" * 100)
    with pytest.raises(ConclaveError) as exc:
        snp.launch_digest(snp.SnpInputs(ovmf=DEBIAN_OVMF, vcpus=2, vcpu_type="EPYC-Milan",
                                        kernel=kernel, append="console=ttyS0"))
    assert exc.value.reason == "firmware_malformed"


def test_snp_usage_errors():
    with pytest.raises(ConclaveError) as exc:
        snp.launch_digest(snp.SnpInputs(ovmf=DEBIAN_OVMF, vcpus=1, vcpu_type="NOT-A-CPU"))
    assert exc.value.reason == "usage"
    with pytest.raises(ConclaveError) as exc:
        snp.launch_digest(snp.SnpInputs(ovmf=DEBIAN_OVMF, vcpus=1, vcpu_type="EPYC", append="x"))
    assert exc.value.reason == "usage"


def test_snp_firmware_without_sev_metadata_is_malformed(tmp_path):
    fw = tmp_path / "plain.fd"
    fw.write_bytes(bytes(64 * 1024))
    with pytest.raises(ConclaveError) as exc:
        snp.launch_digest(snp.SnpInputs(ovmf=fw, vcpus=1, vcpu_type="EPYC-Milan"))
    assert exc.value.reason == "firmware_malformed"


# ---------------------------------------------------------------- fragment + CLI -------------
def test_cli_tdx_writes_policy_fragment_that_the_policy_accepts(ccel_vector, tmp_path, capsys):
    out = tmp_path / "fragment.json"
    code = cli_main(["measure", "tdx", "--firmware", str(DEBIAN_OVMF),
                     "--ccel-table", str(ccel_vector / "ccel_table.bin"),
                     "--ccel-data", str(ccel_vector / "ccel_data.bin"),
                     "--out", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    frag = json.loads(out.read_text())
    assert result["fragment"] == frag
    quote = parse_quote((ccel_vector / "quote.bin").read_bytes())
    assert frag["tdx"]["rtmr1"] == [quote.body.rtmr1.hex()]
    assert frag["tdx"]["mr_td"] == [tdvf.compute_mrtd(DEBIAN_OVMF.read_bytes()).hex()]
    # xfam (the CPU features the VMM exposes) is not measured: read from a quote of the image
    policy = Policy.from_dict({"production": True, "allowed_tee": ["tdx"],
                               "tdx": {**frag["tdx"], "xfam": [quote.body.xfam.hex()]}})
    assert policy.section(policy.allowed_tee.__iter__().__next__())["rtmr0"] == frag["tdx"]["rtmr0"]


def test_cli_snp_yaml_fragment(tmp_path, capsys):
    import yaml

    code = cli_main(["measure", "snp", "--ovmf", str(DEBIAN_OVMF), "--vcpus", "2",
                     "--vcpu-type", "EPYC-Milan", "--format", "yaml"])
    assert code == 0
    frag = yaml.safe_load(capsys.readouterr().out)
    expected = snp.launch_digest(snp.SnpInputs(ovmf=DEBIAN_OVMF, vcpus=2, vcpu_type="EPYC-Milan"))
    assert frag == {"snp": {"measurement": [expected.hex()]}}
    Policy.from_dict({"production": True, "allowed_tee": ["snp"],   # production SNP needs a minimum TCB
                      "snp": {**frag["snp"], "min_tcb": {"snp": 0}}})


def test_cli_exit_codes(tmp_path, capsys):
    assert cli_main(["measure", "tdx"]) == 1
    garbage = tmp_path / "fw.bin"
    garbage.write_bytes(bytes(4096))
    assert cli_main(["measure", "tdx", "--firmware", str(garbage), "--json"]) == 5
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reason"] == \
        "firmware_malformed"
    assert cli_main(["measure", "snp", "--ovmf", str(DEBIAN_OVMF), "--vcpus", "1",
                     "--vcpu-type", "bogus"]) == 1


def test_fragment_rejects_wrong_length():
    with pytest.raises(ConclaveError) as exc:
        fragment.render({"snp": {"measurement": ["00" * 47]}}, "json")
    assert exc.value.reason == "policy_invalid"
