"""Intel TDX quote v4 / v5 parser (structure only; no cryptography is checked here).

Layout (Intel TDX DCAP Quoting Library API, appendix A "Quote format"):

    v4: header(48) | TD report body v4 (584)                 | u32 sig_data_len | sig data
    v5: header(48) | u16 body_type | u32 body_size | body   | u32 sig_data_len | sig data
        body_type 2 = TDX 1.0 report (584), 3 = TDX 1.5 report (648: + TEE_TCB_SVN2, MRSERVICETD)
    sig data (ECDSA-256): quote signature r||s (64) | attestation key x||y (64) |
        certification data: u16 type (6) | u32 size | QE report (384) | QE report signature (64) |
        u16 auth size | QE auth data | nested certification data: u16 type (5) | u32 size | PCK chain PEM

The quote is sized from its length fields; bytes after the signature data are ignored (real
quote buffers carry padding). All integers are little-endian. Every read is bounds-checked and
raises MalformedEvidence; inner sizes must exactly fill their containers.
"""
from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from conclave.runtime.attestation.core import MalformedEvidence
from conclave.runtime.attestation.tdx_pck import PckExtensions, pck_extensions

HEADER_SIZE = 48
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
QE_REPORT_SIZE = 384
ECDSA_SIG_SIZE = 64
ECDSA_KEY_SIZE = 64

TEE_TYPE_TDX = 0x81
ATT_KEY_ECDSA_P256 = 2
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5
BODY_TYPE_TDX10 = 2
BODY_TYPE_TDX15 = 3
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


class _Reader:
    """Bounds-checked little-endian reader over a byte slice."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise MalformedEvidence(f"TDX quote truncated reading {what} ({n} bytes at offset {self.pos}, "
                                    f"{self.end - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    reserved: bytes  # bytes 8..12 (QE SVN / PCE SVN in SGX quotes; zero in TDX quotes)
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReportBody:
    """TD report body (TDX 1.0); TDX 1.5 adds tee_tcb_svn2 and mr_servicetd."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None


@dataclass(frozen=True)
class QeReport:
    """SGX enclave report of the Quoting Enclave (384 bytes)."""

    raw: bytes
    cpu_svn: bytes
    miscselect: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True)
class ParsedTdxQuote:
    """A structurally valid TDX quote. `signed` is header+body (what the attestation key signed)."""

    raw: bytes  # exactly the quote (trailing buffer bytes dropped)
    header: QuoteHeader
    body_type: int | None  # None for v4
    body: TdReportBody
    signed: bytes
    quote_signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    pck_chain: tuple[x509.Certificate, ...]  # as embedded, leaf first
    pck: PckExtensions
    trailing_bytes: int

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES.TUD.DEBUG (bit 0): the host can read and write the TD's memory."""
        return bool(self.body.td_attributes[0] & 0x01)


def _parse_header(r: _Reader) -> QuoteHeader:
    version = r.u16("header.version")
    att_key_type = r.u16("header.att_key_type")
    tee_type = r.u32("header.tee_type")
    reserved = r.take(4, "header.reserved")
    qe_vendor_id = r.take(16, "header.qe_vendor_id")
    user_data = r.take(20, "header.user_data")
    if version not in (4, 5):
        raise MalformedEvidence(f"unsupported TDX quote version {version} (4 and 5 are supported)")
    if tee_type != TEE_TYPE_TDX:
        raise MalformedEvidence(f"TEE type {tee_type:#x} is not TDX (0x81)")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise MalformedEvidence(f"attestation key type {att_key_type} is not ECDSA-256-with-P-256 (2)")
    return QuoteHeader(version, att_key_type, tee_type, reserved, qe_vendor_id, user_data)


def _parse_body(r: _Reader, tdx15: bool) -> TdReportBody:
    fields = dict(
        tee_tcb_svn=r.take(16, "body.tee_tcb_svn"),
        mr_seam=r.take(48, "body.mr_seam"),
        mr_signer_seam=r.take(48, "body.mr_signer_seam"),
        seam_attributes=r.take(8, "body.seam_attributes"),
        td_attributes=r.take(8, "body.td_attributes"),
        xfam=r.take(8, "body.xfam"),
        mr_td=r.take(48, "body.mr_td"),
        mr_config_id=r.take(48, "body.mr_config_id"),
        mr_owner=r.take(48, "body.mr_owner"),
        mr_owner_config=r.take(48, "body.mr_owner_config"),
        rtmr0=r.take(48, "body.rtmr0"),
        rtmr1=r.take(48, "body.rtmr1"),
        rtmr2=r.take(48, "body.rtmr2"),
        rtmr3=r.take(48, "body.rtmr3"),
        report_data=r.take(64, "body.report_data"),
    )
    if tdx15:
        fields["tee_tcb_svn2"] = r.take(16, "body.tee_tcb_svn2")
        fields["mr_servicetd"] = r.take(48, "body.mr_servicetd")
    return TdReportBody(**fields)


def parse_qe_report(raw: bytes) -> QeReport:
    r = _Reader(raw)
    cpu_svn = r.take(16, "qe_report.cpu_svn")
    miscselect = r.u32("qe_report.miscselect")
    r.take(28, "qe_report.reserved1")
    attributes = r.take(16, "qe_report.attributes")
    mr_enclave = r.take(32, "qe_report.mr_enclave")
    r.take(32, "qe_report.reserved2")
    mr_signer = r.take(32, "qe_report.mr_signer")
    r.take(96, "qe_report.reserved3")
    isv_prod_id = r.u16("qe_report.isv_prod_id")
    isv_svn = r.u16("qe_report.isv_svn")
    r.take(60, "qe_report.reserved4")
    report_data = r.take(64, "qe_report.report_data")
    if r.pos != len(raw):
        raise MalformedEvidence("QE report is not 384 bytes")
    return QeReport(raw, cpu_svn, miscselect, attributes, mr_enclave, mr_signer, isv_prod_id, isv_svn, report_data)


def parse_pem_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """The PEM chain as embedded (NUL padding stripped); at least one certificate."""
    text = pem.rstrip(b"\x00")
    if b"\x00" in text:
        raise MalformedEvidence("PCK certificate chain contains NUL bytes")
    try:
        certs = tuple(x509.load_pem_x509_certificates(text))
    except ValueError as exc:
        raise MalformedEvidence(f"PCK certificate chain is not valid PEM/DER: {exc}") from None
    if not certs:
        raise MalformedEvidence("PCK certificate chain is empty")
    for cert in certs:
        try:  # decode every key and extension now so that verification never meets an unreadable one
            cert.public_key()
            cert.extensions  # noqa: B018
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
            cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number  # noqa: B018
        except Exception as exc:  # cryptography raises ValueError, UnsupportedAlgorithm, ...
            raise MalformedEvidence(f"PCK certificate chain holds an unreadable certificate: "
                                    f"{type(exc).__name__}") from None
    return certs


def parse_quote(data: bytes) -> ParsedTdxQuote:
    """Parse a TDX quote v4/v5 with certification data type 6 (nested type 5)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedEvidence("TDX quote must be bytes")
    data = bytes(data)
    r = _Reader(data)
    header = _parse_header(r)
    body_type: int | None = None
    if header.version == 4:
        body = _parse_body(r, tdx15=False)
    else:
        body_type = r.u16("body_type")
        body_size = r.u32("body_size")
        expected = {BODY_TYPE_TDX10: TD_REPORT10_SIZE, BODY_TYPE_TDX15: TD_REPORT15_SIZE}.get(body_type)
        if expected is None:
            raise MalformedEvidence(f"unsupported TDX quote v5 body type {body_type} (2 and 3 are supported)")
        if body_size != expected:
            raise MalformedEvidence(f"v5 body type {body_type} must be {expected} bytes, header says {body_size}")
        body = _parse_body(r, tdx15=body_type == BODY_TYPE_TDX15)
    signed = data[:r.pos]

    sig_data_len = r.u32("sig_data_len")
    sig_end = r.pos + sig_data_len
    if sig_end > len(data):
        raise MalformedEvidence(f"signature data length {sig_data_len} runs past the end of the quote")
    s = _Reader(data, r.pos, sig_end)
    quote_signature = s.take(ECDSA_SIG_SIZE, "quote_signature")
    attestation_key = s.take(ECDSA_KEY_SIZE, "attestation_key")
    cert_type = s.u16("certification_data.type")
    cert_size = s.u32("certification_data.size")
    if cert_type != CERT_DATA_QE_REPORT:
        raise MalformedEvidence(f"certification data type {cert_type} is not 6 (QE report certification data)")
    if s.pos + cert_size != sig_end:
        raise MalformedEvidence(f"certification data size {cert_size} does not fill the signature data "
                                f"({sig_end - s.pos} bytes left)")
    qe_report_raw = s.take(QE_REPORT_SIZE, "qe_report")
    qe_report_signature = s.take(ECDSA_SIG_SIZE, "qe_report_signature")
    auth_size = s.u16("qe_auth_data.size")
    qe_auth_data = s.take(auth_size, "qe_auth_data")
    inner_type = s.u16("nested_certification_data.type")
    inner_size = s.u32("nested_certification_data.size")
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise MalformedEvidence(f"nested certification data type {inner_type} is not 5 (PCK chain PEM)")
    if s.pos + inner_size != sig_end:
        raise MalformedEvidence(f"nested certification data size {inner_size} does not fill the certification "
                                f"data ({sig_end - s.pos} bytes left)")
    pck_chain_pem = s.take(inner_size, "pck_chain")

    qe_report = parse_qe_report(qe_report_raw)
    chain = parse_pem_chain(pck_chain_pem)
    pck = pck_extensions(chain[0])
    return ParsedTdxQuote(
        raw=data[:sig_end], header=header, body_type=body_type, body=body, signed=signed,
        quote_signature=quote_signature, attestation_key=attestation_key, qe_report=qe_report,
        qe_report_signature=qe_report_signature, qe_auth_data=qe_auth_data, pck_chain_pem=pck_chain_pem,
        pck_chain=chain, pck=pck, trailing_bytes=len(data) - sig_end,
    )


def looks_like_quote(data: bytes) -> bool:
    """Cheap sniff: version 4/5, ECDSA P-256 key type, TEE type TDX."""
    if len(data) < HEADER_SIZE:
        return False
    version = int.from_bytes(data[0:2], "little")
    return (version in (4, 5) and int.from_bytes(data[2:4], "little") == ATT_KEY_ECDSA_P256
            and int.from_bytes(data[4:8], "little") == TEE_TYPE_TDX)
