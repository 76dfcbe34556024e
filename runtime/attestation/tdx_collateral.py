"""Intel quote-verification collateral for TDX: loading and structural parsing (no trust decisions).

Two on-disk shapes are accepted:
- a JSON file in dcap-qvl's QuoteCollateralV3 layout: pck_crl_issuer_chain, root_ca_crl, pck_crl,
  tcb_info_issuer_chain, tcb_info, tcb_info_signature, qe_identity_issuer_chain, qe_identity,
  qe_identity_signature. tcb_info / qe_identity are the exact signed JSON strings, signatures are
  hex raw r||s (P-256), CRLs are hex DER, PEM, or base64 DER; chains are PEM.
- a folder of raw Intel PCS responses (also searched in a `pcs/` subfolder): `*tcb_info*.json` /
  `*tcbinfo*.json` ({"tcbInfo": ..., "signature": ...}), `*qe_identity*.json` / `*enclave_identity*`
  ({"enclaveIdentity": ..., "signature": ...}), CRL files (`*root*crl*`, `*pck*crl*`, DER or PEM) and
  PEM chains (`*tcb*signing*` / `*tcb_info_issuer*`, `*pck_crl_issuer*`; URL-encoded PCS headers are
  decoded). A folder holding `collateral.json` is read as that file.
The signature on a PCS body covers the exact bytes of the "tcbInfo"/"enclaveIdentity" value, so
those bytes are cut out of the response text, never re-serialised.

Parsed collateral objects are cached by (path, size, mtime) and carry their own signature-check
cache, so re-verifying many quotes against one collateral set costs only the per-quote checks.
"""
from __future__ import annotations

import base64
import binascii
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509

from conclave.runtime.attestation.core import Reason, VerificationFailed

TCB_STATUSES = frozenset({
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked",
})


def _invalid(message: str) -> VerificationFailed:
    return VerificationFailed(Reason.COLLATERAL_INVALID, message)


# ---------------------------------------------------------------------------------------------
# Parsed TCB info and QE identity
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TcbLevel:
    sgx_components: tuple[int, ...]  # 16
    pce_svn: int
    tdx_components: tuple[int, ...]  # 16
    status: str
    date: datetime | None
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModuleTcbLevel:
    isv_svn: int
    status: str
    date: datetime | None
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModuleIdentity:
    id: str
    mr_signer: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[ModuleTcbLevel, ...]


@dataclass(frozen=True)
class TcbInfo:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_evaluation_data_number: int
    tdx_module: TdxModuleIdentity | None  # the default module identity ("tdxModule")
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class QeIdentity:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mr_signer: bytes
    isv_prod_id: int
    tcb_levels: tuple[ModuleTcbLevel, ...]


def _get(d: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise _invalid(f"{where}: missing '{key}'")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _invalid(f"{where}: '{key}' has the wrong type")
    return value


def _hex(d: Any, key: str, size: int, where: str) -> bytes:
    text = _get(d, key, str, where)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise _invalid(f"{where}: '{key}' is not hex") from None
    if len(raw) != size:
        raise _invalid(f"{where}: '{key}' must be {size} bytes")
    return raw


def _date(d: Any, key: str, where: str, required: bool = True) -> datetime | None:
    if not required and (not isinstance(d, dict) or key not in d):
        return None
    text = _get(d, key, str, where)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(f"{where}: '{key}' is not an ISO 8601 date") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def _status(d: Any, where: str) -> str:
    status = _get(d, "tcbStatus", str, where)
    if status not in TCB_STATUSES:
        raise _invalid(f"{where}: unknown tcbStatus {status!r}")
    return status


def _advisories(d: Any, where: str) -> tuple[str, ...]:
    ids = d.get("advisoryIDs", []) if isinstance(d, dict) else None
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise _invalid(f"{where}: advisoryIDs must be a list of strings")
    return tuple(ids)


def _svn(value: Any, where: str, limit: int = 255) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise _invalid(f"{where}: SVN must be an integer 0..{limit}")
    return value


def _components(tcb: Any, key: str, where: str) -> tuple[int, ...]:
    items = _get(tcb, key, list, where)
    if len(items) != 16:
        raise _invalid(f"{where}: '{key}' must have 16 components")
    return tuple(_svn(_get(c, "svn", int, where), where) for c in items)


def _module_levels(levels: Any, where: str) -> tuple[ModuleTcbLevel, ...]:
    if not isinstance(levels, list) or not levels:
        raise _invalid(f"{where}: tcbLevels must be a non-empty list")
    out = []
    for level in levels:
        tcb = _get(level, "tcb", dict, where)
        out.append(ModuleTcbLevel(_svn(_get(tcb, "isvsvn", int, where), where, 0xFFFF), _status(level, where),
                                  _date(level, "tcbDate", where, required=False), _advisories(level, where)))
    return tuple(out)


def _module_identity(d: Any, where: str, with_levels: bool) -> TdxModuleIdentity:
    return TdxModuleIdentity(
        id=d.get("id", "") if isinstance(d, dict) else "",
        mr_signer=_hex(d, "mrsigner", 48, where),
        attributes=_hex(d, "attributes", 8, where),
        attributes_mask=_hex(d, "attributesMask", 8, where),
        tcb_levels=_module_levels(_get(d, "tcbLevels", list, where), where) if with_levels else (),
    )


def parse_tcb_info(raw: bytes) -> TcbInfo:
    where = "tcbInfo"
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("tcbInfo is not JSON") from None
    if not isinstance(d, dict):
        raise _invalid("tcbInfo is not a JSON object")
    tdx_module = _module_identity(d["tdxModule"], "tcbInfo.tdxModule", False) if "tdxModule" in d else None
    raw_identities = d.get("tdxModuleIdentities", [])
    if not isinstance(raw_identities, list):
        raise _invalid("tcbInfo: tdxModuleIdentities must be a list")
    identities = tuple(_module_identity(m, "tcbInfo.tdxModuleIdentities", True) for m in raw_identities)
    is_tdx = d.get("id") == "TDX" if isinstance(d, dict) else False
    levels = []
    for level in _get(d, "tcbLevels", list, where):
        tcb = _get(level, "tcb", dict, where)
        # a TDX level without TDX components would match every TD: fail closed
        tdx = _components(tcb, "tdxtcbcomponents", where) if is_tdx or "tdxtcbcomponents" in tcb else (0,) * 16
        levels.append(TcbLevel(_components(tcb, "sgxtcbcomponents", where),
                               _svn(_get(tcb, "pcesvn", int, where), where, 0xFFFF), tdx,
                               _status(level, where), _date(level, "tcbDate", where, required=False),
                               _advisories(level, where)))
    if not levels:
        raise _invalid("tcbInfo has no TCB levels")
    if _get(d, "tcbType", int, where) != 0:
        raise _invalid("tcbInfo: only tcbType 0 is defined")
    return TcbInfo(
        id=_get(d, "id", str, where) if "id" in d else "",
        version=_get(d, "version", int, where),
        issue_date=_date(d, "issueDate", where),
        next_update=_date(d, "nextUpdate", where),
        fmspc=_hex(d, "fmspc", 6, where),
        pce_id=_hex(d, "pceId", 2, where),
        tcb_evaluation_data_number=_get(d, "tcbEvaluationDataNumber", int, where),
        tdx_module=tdx_module,
        tdx_module_identities=identities,
        tcb_levels=tuple(levels),
    )


def parse_qe_identity(raw: bytes) -> QeIdentity:
    where = "enclaveIdentity"
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("QE identity is not JSON") from None
    if not isinstance(d, dict):
        raise _invalid("QE identity is not a JSON object")
    return QeIdentity(
        id=_get(d, "id", str, where),
        version=_get(d, "version", int, where),
        issue_date=_date(d, "issueDate", where),
        next_update=_date(d, "nextUpdate", where),
        miscselect=int.from_bytes(_hex(d, "miscselect", 4, where), "big"),
        miscselect_mask=int.from_bytes(_hex(d, "miscselectMask", 4, where), "big"),
        attributes=_hex(d, "attributes", 16, where),
        attributes_mask=_hex(d, "attributesMask", 16, where),
        mr_signer=_hex(d, "mrsigner", 32, where),
        isv_prod_id=_svn(_get(d, "isvprodid", int, where), where, 0xFFFF),
        tcb_levels=_module_levels(_get(d, "tcbLevels", list, where), where),
    )


# ---------------------------------------------------------------------------------------------
# The collateral set
# ---------------------------------------------------------------------------------------------

@dataclass(eq=False)
class TdxCollateral:
    """One collateral set. CRLs and chains are optional (revocation is then reported unchecked)."""

    tcb_info_raw: bytes
    tcb_info_signature: bytes
    tcb_info: TcbInfo
    qe_identity_raw: bytes
    qe_identity_signature: bytes
    qe_identity: QeIdentity
    tcb_info_issuer_chain: tuple[x509.Certificate, ...] = ()
    qe_identity_issuer_chain: tuple[x509.Certificate, ...] = ()
    pck_crl_issuer_chain: tuple[x509.Certificate, ...] = ()
    pck_crl: x509.CertificateRevocationList | None = None
    root_ca_crl: x509.CertificateRevocationList | None = None
    source: str = ""
    # memo of signature checks: (what, signer public key DER) -> bool
    _sig_cache: dict = field(default_factory=dict, repr=False)


def _signature(value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError:
        raise _invalid(f"{what} is not hex") from None
    if len(raw) != 64:
        raise _invalid(f"{what} must be 64 bytes (raw r||s)")
    return raw


def _chain(text: str | bytes, what: str) -> tuple[x509.Certificate, ...]:
    data = text.encode() if isinstance(text, str) else text
    if b"-----BEGIN CERTIFICATE-----" not in data and b"%" in data:  # URL-encoded PCS response header
        data = urllib.parse.unquote_to_bytes(data.strip())
    if not data.strip():
        return ()
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise _invalid(f"{what} is not a PEM certificate chain: {exc}") from None


def _crl(value: str | bytes, what: str) -> x509.CertificateRevocationList:
    data = value.encode() if isinstance(value, str) else value
    if data[:1] == b"\x30":
        # raw DER (a SEQUENCE), never stripped: its last bytes may well be 0x0a or 0x20
        try:
            return x509.load_der_x509_crl(data)
        except ValueError as exc:
            raise _invalid(f"{what} is not a DER CRL: {exc}") from None
    stripped = data.strip()
    try:
        if b"-----BEGIN" in stripped:
            return x509.load_pem_x509_crl(stripped)
        if stripped[:2] == b"30" and all(c in b"0123456789abcdefABCDEF" for c in stripped):
            return x509.load_der_x509_crl(bytes.fromhex(stripped.decode("ascii")))  # hex DER
        return x509.load_der_x509_crl(base64.b64decode(stripped, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise _invalid(f"{what} is not a CRL (hex DER, DER, PEM or base64): {exc}") from None


def collateral_from_v3_json(text: str | bytes, source: str = "") -> TdxCollateral:
    """dcap-qvl QuoteCollateralV3 JSON -> TdxCollateral."""
    try:
        d = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("collateral file is not JSON") from None
    if not isinstance(d, dict):
        raise _invalid("collateral JSON must be an object")
    for key in ("tcb_info", "tcb_info_signature", "qe_identity", "qe_identity_signature"):
        if not isinstance(d.get(key), str):
            raise _invalid(f"collateral JSON lacks '{key}'")
    tcb_raw = d["tcb_info"].encode()
    qe_raw = d["qe_identity"].encode()

    def optional_chain(key: str) -> tuple[x509.Certificate, ...]:
        value = d.get(key)
        return _chain(value, key) if isinstance(value, str) and value.strip() else ()

    def optional_crl(key: str) -> x509.CertificateRevocationList | None:
        value = d.get(key)
        return _crl(value, key) if isinstance(value, str) and value.strip() else None

    return TdxCollateral(
        tcb_info_raw=tcb_raw, tcb_info_signature=_signature(d["tcb_info_signature"], "tcb_info_signature"),
        tcb_info=parse_tcb_info(tcb_raw),
        qe_identity_raw=qe_raw, qe_identity_signature=_signature(d["qe_identity_signature"], "qe_identity_signature"),
        qe_identity=parse_qe_identity(qe_raw),
        tcb_info_issuer_chain=optional_chain("tcb_info_issuer_chain"),
        qe_identity_issuer_chain=optional_chain("qe_identity_issuer_chain"),
        pck_crl_issuer_chain=optional_chain("pck_crl_issuer_chain"),
        pck_crl=optional_crl("pck_crl"), root_ca_crl=optional_crl("root_ca_crl"),
        source=source,
    )


def raw_json_member(text: bytes, key: str) -> bytes:
    """The exact bytes of the value of top-level member `key` in a JSON object (PCS signed body)."""
    try:
        parsed = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise _invalid(f"PCS response holding '{key}' is not JSON") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get(key), dict):
        raise _invalid(f"PCS response lacks an object '{key}'")
    decoder = json.JSONDecoder()
    try:
        s = text.decode("utf-8-sig")
        i = s.index("{") + 1
        while True:
            while s[i] in " \t\r\n,":
                i += 1
            name, i = json.decoder.scanstring(s, i + 1)
            while s[i] in " \t\r\n:":
                i += 1
            _, end = decoder.raw_decode(s, i)
            if name == key:
                return s[i:end].encode("utf-8")
            i = end
    except (ValueError, IndexError):
        raise _invalid(f"cannot locate the signed '{key}' bytes in the PCS response") from None


def _pcs_body(path: Path, key: str) -> tuple[bytes, bytes]:
    text = path.read_bytes()
    body = raw_json_member(text, key)
    sig = json.loads(text).get("signature")
    if not isinstance(sig, str):
        raise _invalid(f"{path.name}: PCS response lacks 'signature'")
    return body, _signature(sig, f"{path.name} signature")


def _find(files: list[Path], *needles: tuple[str, ...], exclude: tuple[str, ...] = ()) -> Path | None:
    """First file whose lowercase name contains every word of one of the needle groups."""
    for group in needles:
        for f in files:
            name = f.name.lower().replace("-", "_")
            if all(w in name for w in group) and not any(x in name for x in exclude):
                return f
    return None


def collateral_from_pcs_folder(folder: Path) -> TdxCollateral:
    files = sorted(p for d in (folder, folder / "pcs") if d.is_dir() for p in d.iterdir() if p.is_file())
    tcb_file = _find(files, ("tcb_info", ".json"), ("tcbinfo", ".json"))
    qe_file = _find(files, ("qe_identity", ".json"), ("enclave_identity", ".json"), ("qeidentity", ".json"))
    if tcb_file is None or qe_file is None:
        raise _invalid(f"{folder}: no PCS TCB info and QE identity responses found "
                       "(expected *tcb_info*.json and *qe_identity*.json)")
    tcb_raw, tcb_sig = _pcs_body(tcb_file, "tcbInfo")
    qe_raw, qe_sig = _pcs_body(qe_file, "enclaveIdentity")
    tcb_chain_file = _find(files, ("tcb", "signing"), ("tcb_info_issuer",), ("tcb", "chain"))
    qe_chain_file = _find(files, ("qe_identity_issuer",), ("enclave_identity_issuer",))
    pck_chain_file = _find(files, ("pck_crl_issuer",), ("pck", "crl", "chain"))
    root_crl_file = _find(files, ("root", "crl"), exclude=("chain",))
    pck_crl_file = _find(files, ("pck", "crl"), ("pckcrl",), exclude=("chain", "issuer"))
    tcb_chain = _chain(tcb_chain_file.read_bytes(), tcb_chain_file.name) if tcb_chain_file else ()
    qe_chain = _chain(qe_chain_file.read_bytes(), qe_chain_file.name) if qe_chain_file else tcb_chain
    return TdxCollateral(
        tcb_info_raw=tcb_raw, tcb_info_signature=tcb_sig, tcb_info=parse_tcb_info(tcb_raw),
        qe_identity_raw=qe_raw, qe_identity_signature=qe_sig, qe_identity=parse_qe_identity(qe_raw),
        tcb_info_issuer_chain=tcb_chain, qe_identity_issuer_chain=qe_chain,
        pck_crl_issuer_chain=_chain(pck_chain_file.read_bytes(), pck_chain_file.name) if pck_chain_file else (),
        pck_crl=_crl(pck_crl_file.read_bytes(), pck_crl_file.name) if pck_crl_file else None,
        root_ca_crl=_crl(root_crl_file.read_bytes(), root_crl_file.name) if root_crl_file else None,
        source=str(folder),
    )


_CACHE: dict[tuple, TdxCollateral] = {}
_CACHE_LOCK = threading.Lock()


def _fingerprint(path: Path) -> tuple:
    if path.is_file():
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns)
    parts = [str(path)]
    for d in (path, path / "pcs"):
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file():
                    st = p.stat()
                    parts.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(parts)


def load_collateral(path: Path) -> TdxCollateral:
    """File (QuoteCollateralV3 JSON) or folder (PCS responses) -> parsed, cached TdxCollateral."""
    path = Path(path).resolve()
    if path.is_dir() and (path / "collateral.json").is_file():
        path = path / "collateral.json"
    if not path.exists():
        raise _invalid(f"collateral path {path} does not exist")
    try:
        key = _fingerprint(path)
    except OSError as exc:
        raise _invalid(f"cannot read collateral at {path}: {exc}") from None
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    try:
        if path.is_dir():
            collateral = collateral_from_pcs_folder(path)
        else:
            collateral = collateral_from_v3_json(path.read_bytes(), source=str(path))
    except OSError as exc:
        raise _invalid(f"cannot read collateral at {path}: {exc}") from None
    with _CACHE_LOCK:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = collateral
    return collateral
