"""Collateral fetching and caching against a tiny HTTP server on 127.0.0.1 serving real vendor files."""
from __future__ import annotations

import threading
import urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conclave.runtime.attestation import collateral_fetch as cf
from conclave.runtime.attestation import snp, tdx
from conclave.runtime.attestation.core import Reason, VerificationFailed


class FakeVendor:
    """Serves fixed routes (path+query -> body, headers); records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.requests: list[str] = []
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                vendor.requests.append(self.path)
                route = vendor.routes.get(self.path)
                if route is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                body, headers = route
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture()
def vendor():
    v = FakeVendor()
    yield v
    v.close()


SPR = "tdx/go-tdx-guest-v4-spr/pcs"
FMSPC = "50806f000000"


def _serve_intel(vendor: FakeVendor, vectors: Path) -> None:
    pcs = vectors / SPR
    signing = urllib.parse.quote((pcs / "tcb_signing_chain_2018-2025.pem").read_text())
    vendor.routes[f"/tdx/certification/v4/tcb?fmspc={FMSPC}"] = (
        (pcs / "tcb_info_response.json").read_bytes(), {"TCB-Info-Issuer-Chain": signing})
    vendor.routes["/tdx/certification/v4/qe/identity"] = (
        (pcs / "qe_identity_response.json").read_bytes(), {"SGX-Enclave-Identity-Issuer-Chain": signing})
    vendor.routes["/sgx/certification/v4/pckcrl?ca=platform&encoding=der"] = (
        (pcs / "pckcrl_platform.der").read_bytes(),
        {"SGX-PCK-CRL-Issuer-Chain": urllib.parse.quote((pcs / "pck_crl_issuer_chain.pem").read_text())})
    vendor.routes["/IntelSGXRootCA.der"] = ((pcs / "root_ca_crl.der").read_bytes(), {})


def _fetch_tdx(vendor, tmp_path, **kw):
    return cf.fetch_tdx_collateral(FMSPC, cache=tmp_path, pcs_base=vendor.base,
                                   root_crl_url=f"{vendor.base}/IntelSGXRootCA.der", **kw)


def test_tdx_fetch_cache_and_verify(vendor, vectors_dir, tmp_path):
    _serve_intel(vendor, vectors_dir)
    folder = _fetch_tdx(vendor, tmp_path)
    assert folder == tmp_path / "collateral" / "tdx" / f"{FMSPC}-platform"
    # signed bodies are stored byte for byte
    assert (folder / "tcb_info_response.json").read_bytes() == \
        (vectors_dir / SPR / "tcb_info_response.json").read_bytes()
    assert len(vendor.requests) == 4
    # the cached folder verifies a real quote end to end (UpToDate per its PROVENANCE.md)
    quote = tdx.parse((vectors_dir / "tdx/trustee-v4-spr-2023/quote.bin").read_bytes())
    verified = tdx.verify(quote, at=datetime(2023, 7, 1, tzinfo=timezone.utc),
                          collateral=tdx.load_collateral(folder))
    assert verified.tcb_status == "UpToDate" and verified.revocation_checked
    # second call is served from the cache; offline mode never asks the network
    assert _fetch_tdx(vendor, tmp_path) == folder and len(vendor.requests) == 4
    vendor.routes.clear()
    assert _fetch_tdx(vendor, tmp_path, offline=True) == folder and len(vendor.requests) == 4
    # refresh goes to the network (and now fails: the server has nothing)
    with pytest.raises(VerificationFailed) as info:
        _fetch_tdx(vendor, tmp_path, refresh=True)
    assert info.value.reason == Reason.COLLATERAL_MISSING
    assert (folder / "tcb_info_response.json").is_file()  # a failed refresh keeps the old cache


def test_tdx_offline_without_cache(tmp_path):
    with pytest.raises(VerificationFailed) as info:
        cf.fetch_tdx_collateral(FMSPC, cache=tmp_path, offline=True,
                                pcs_base="http://127.0.0.1:9", root_crl_url="http://127.0.0.1:9/x")
    assert info.value.reason == Reason.COLLATERAL_MISSING


def test_tdx_missing_issuer_header(vendor, vectors_dir, tmp_path):
    _serve_intel(vendor, vectors_dir)
    body, _ = vendor.routes[f"/tdx/certification/v4/tcb?fmspc={FMSPC}"]
    vendor.routes[f"/tdx/certification/v4/tcb?fmspc={FMSPC}"] = (body, {})
    with pytest.raises(VerificationFailed) as info:
        _fetch_tdx(vendor, tmp_path)
    assert info.value.reason == Reason.COLLATERAL_MISSING
    assert not (tmp_path / "collateral" / "tdx" / f"{FMSPC}-platform").exists()  # nothing half-written


def test_unreachable_server_is_collateral_missing(tmp_path):
    with pytest.raises(VerificationFailed) as info:
        cf.fetch_tdx_collateral(FMSPC, cache=tmp_path, pcs_base="http://127.0.0.1:9",
                                root_crl_url="http://127.0.0.1:9/x", timeout=2)
    assert info.value.reason == Reason.COLLATERAL_MISSING


@pytest.mark.parametrize("bad", ["50806f", "zz806f000000", b"\x00" * 5])
def test_bad_fmspc(tmp_path, bad):
    with pytest.raises(ValueError):
        cf.fetch_tdx_collateral(bad, cache=tmp_path, offline=True)


MILAN = "snp/go-sev-guest-milan-v2"


def _serve_amd(vendor: FakeVendor, vectors: Path, chip_id: bytes, tcb: dict, crl: bytes | None) -> str:
    url = cf.vcek_url("milan", chip_id, tcb, kds_base=vendor.base)
    path = url[len(vendor.base):]
    vendor.routes[path] = ((vectors / MILAN / "vcek.der").read_bytes(), {})
    vendor.routes["/vcek/v1/Milan/cert_chain"] = ((vectors / MILAN / "ask_ark_milan.pem").read_bytes(), {})
    if crl is not None:
        vendor.routes["/vcek/v1/Milan/crl"] = (crl, {})
    return path


def test_snp_vcek_fetch_and_verify(vendor, vectors_dir, tmp_path):
    report = snp.parse((vectors_dir / MILAN / "report.bin").read_bytes())
    claims = snp.claims(report)
    chip_id, tcb = claims["chip_id"], claims["reported_tcb"]
    path = _serve_amd(vendor, vectors_dir, chip_id, tcb, crl=None)
    assert path == (f"/vcek/v1/Milan/{chip_id.hex()}?blSPL={tcb['bootloader']}&teeSPL={tcb['tee']}"
                    f"&snpSPL={tcb['snp']}&ucodeSPL={tcb['microcode']}")
    folder = cf.fetch_snp_collateral("milan", chip_id=chip_id, reported_tcb=tcb, cache=tmp_path,
                                     kds_base=vendor.base, include_crl=False)
    verified = snp.verify(report, at=datetime(2022, 9, 24, 1, tzinfo=timezone.utc),
                          collateral=snp.load_collateral(folder))
    assert verified.claims["measurement"] == claims["measurement"]
    assert cf.fetch_snp_collateral("milan", chip_id=chip_id, reported_tcb=tcb, cache=tmp_path, offline=True,
                                   include_crl=False) == folder
    with pytest.raises(VerificationFailed) as info:  # the CRL was never fetched
        cf.fetch_snp_collateral("milan", chip_id=chip_id, reported_tcb=tcb, cache=tmp_path, offline=True)
    assert info.value.reason == Reason.COLLATERAL_MISSING


def test_snp_crl_is_fetched_and_404_fails(vendor, vectors_dir, tmp_path):
    chip_id, tcb = bytes(range(64)), {"bootloader": 1, "tee": 0, "snp": 2, "microcode": 3}
    _serve_amd(vendor, vectors_dir, chip_id, tcb, crl=None)
    with pytest.raises(VerificationFailed) as info:
        cf.fetch_snp_collateral("milan", chip_id=chip_id, reported_tcb=tcb, cache=tmp_path, kds_base=vendor.base)
    assert info.value.reason == Reason.COLLATERAL_MISSING
    vendor.routes["/vcek/v1/Milan/crl"] = (b"\x30\x03CRL", {})
    folder = cf.fetch_snp_collateral("milan", chip_id=chip_id, reported_tcb=tcb, cache=tmp_path,
                                     kds_base=vendor.base)
    assert (folder / "crl.der").read_bytes() == b"\x30\x03CRL"


def test_snp_vlek_chain(vendor, vectors_dir, tmp_path):
    vendor.routes["/vlek/v1/Milan/cert_chain"] = (
        (vectors_dir / "snp/trustee-milan-v3-vlek-aws/ask_ark_asvk_milan.pem").read_bytes(), {})
    folder = cf.fetch_snp_collateral("milan", signing_key="vlek", cache=tmp_path, kds_base=vendor.base,
                                     include_crl=False)
    assert (folder / "cert_chain.pem").is_file() and not (folder / "vcek.der").exists()


def test_turin_hwid_and_fmc():
    url = cf.vcek_url("turin", bytes(range(64)), {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4,
                                                   "microcode": 5}, kds_base="http://x")
    assert url == "http://x/vcek/v1/Turin/0001020304050607?fmcSPL=1&blSPL=2&teeSPL=3&snpSPL=4&ucodeSPL=5"
    with pytest.raises(ValueError):
        cf.vcek_url("turin", bytes(64), {"bootloader": 2, "tee": 3, "snp": 4, "microcode": 5})
    with pytest.raises(ValueError):
        cf.vcek_url("sienna", bytes(64), {})


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("CONCLAVE_CACHE_DIR", str(tmp_path / "cc"))
    assert cf.collateral_root() == tmp_path / "cc" / "collateral"


def test_only_http_schemes():
    with pytest.raises(ValueError):
        cf.http_get("file:///etc/passwd")
