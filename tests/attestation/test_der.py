"""The shared strict DER walker (runtime/attestation/der.py) and its two users' error mapping.

The real certificates are covered elsewhere (test_snp_parse / test_snp_vectors read AMD's chain,
test_tdx_vectors checks every PCK extension field of Intel's real quotes against expected.json).
Here: each walker rule with one vector valid except for that defect, and the SGX PCK extension
as tests/data/tdx/make_vectors.py builds it (its own DER encoder, Intel's profile layout), whose
every byte mutation must end in MalformedEvidence.
"""
from __future__ import annotations

import importlib.util
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conclave.runtime.attestation import der, snp_der, tdx_pck
from conclave.runtime.attestation.core import MalformedEvidence


def _vector_generator():
    """tests/data/tdx/make_vectors.py: its independent DER encoder and SGX extension builder."""
    path = Path(__file__).resolve().parents[1] / "data" / "tdx" / "make_vectors.py"
    spec = importlib.util.spec_from_file_location("conclave_tdx_make_vectors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _vector_generator()
tlv, oid = GEN._der, GEN._oid


def test_long_form_length_and_children():
    body = bytes(200)
    data = tlv(der.TAG_SEQUENCE, tlv(der.TAG_OCTET_STRING, body) + tlv(der.TAG_NULL, b""))
    tag, vs, ve = der.read_single(data)
    assert tag == der.TAG_SEQUENCE and ve == len(data)
    kids = der.children(data, vs, ve)
    assert [(k[0], k[3] - k[2]) for k in kids] == [(der.TAG_OCTET_STRING, 200), (der.TAG_NULL, 0)]


@pytest.mark.parametrize("data", [
    b"\x30",                         # truncated header
    b"\x1f\x01\x00",                 # multi-byte tag
    b"\x30\x80\x00\x00",             # indefinite length
    b"\x04\x81\x05abcde",            # long form for a short length (non-minimal)
    b"\x04\x82\x00\x80" + bytes(128),  # leading zero length byte (non-minimal)
    b"\x04\x85\x00\x00\x00\x00\x01a",  # more than 4 length bytes
    b"\x04\x05abc",                  # runs past its container
])
def test_walker_refuses_each_defect(data):
    with pytest.raises(der.DerError):
        der.read_tlv(data, 0, len(data))


def test_trailing_bytes_and_wrong_tag():
    with pytest.raises(der.DerError):
        der.read_single(tlv(der.TAG_NULL, b"") + b"\x00")
    with pytest.raises(der.DerError):
        der.expect(tlv(der.TAG_NULL, b""), 0, 2, der.TAG_SEQUENCE)


def test_scalars():
    assert der.decode_oid(oid("1.2.840.113741.1.13.1")[2:]) == "1.2.840.113741.1.13.1"
    assert der.decode_oid(oid("2.5.4.3")[2:]) == "2.5.4.3"
    for bad in (b"", b"\x2a\x86"):  # empty, last arc unterminated
        with pytest.raises(der.DerError):
            der.decode_oid(bad)
    assert der.decode_integer(b"\xff") == -1 and der.decode_unsigned(b"\x00\xff", max_bytes=2) == 255
    for bad in (b"", b"\x80", b"\x01\x00\x00"):
        with pytest.raises(der.DerError):
            der.decode_unsigned(bad, max_bytes=2)
    assert der.decode_time(der.TAG_UTCTIME, b"491231235959Z") == datetime(2049, 12, 31, 23, 59, 59,
                                                                         tzinfo=timezone.utc)
    assert der.decode_time(der.TAG_GENERALIZEDTIME, b"20500101000000Z").year == 2050
    with pytest.raises(der.DerError):
        der.decode_time(der.TAG_UTCTIME, b"491331235959Z")  # month 13


def test_snp_reader_uses_the_shared_walker():
    """One error type for both readers: SNP callers keep catching snp_der.DerError."""
    assert snp_der.DerError is der.DerError
    assert snp_der.decode_extension_integer(tlv(der.TAG_INTEGER, b"\x07")) == 7
    with pytest.raises(der.DerError):
        snp_der.decode_extension_integer(tlv(der.TAG_OCTET_STRING, b"\x07"))


def test_sgx_extension_fields():
    ext = tdx_pck.parse_sgx_extensions(GEN.sgx_extension())
    assert ext.fmspc == GEN.FMSPC and ext.pce_svn == GEN.PCE_SVN and ext.sgx_type == 0
    assert list(ext.sgx_tcb_components) == GEN.SGX_COMPONENTS
    assert ext.cpu_svn == bytes(GEN.SGX_COMPONENTS) and ext.pce_id == GEN.PCE_ID


@pytest.mark.parametrize("raw", [
    GEN.sgx_extension(fmspc=bytes(5)),        # FMSPC is 6 bytes
    GEN.sgx_extension(pce_svn=70000),         # PCESVN above 65535
    GEN.sgx_extension() + b"\x00",            # trailing bytes
    GEN.sgx_extension()[:-3],                 # truncated
])
def test_sgx_extension_defects_are_malformed_evidence(raw):
    with pytest.raises(MalformedEvidence):
        tdx_pck.parse_sgx_extensions(raw)


VALID_SGX = GEN.sgx_extension()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID_SGX) - 1), st.integers(1, 255))
def test_fuzz_sgx_extension_only_malformed_evidence(pos, xor):
    data = bytearray(VALID_SGX)
    data[pos] ^= xor
    try:
        tdx_pck.parse_sgx_extensions(bytes(data))
    except MalformedEvidence:
        pass
