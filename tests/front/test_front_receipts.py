"""Signed per-response receipts through the real head front (simulated evidence, stub upstream):
valid for streamed and non-streamed completions, each kind of tampering fails with its own reason,
kept run reports still verify after the cluster changed, and `conclave proxy` refuses bad receipts."""
from __future__ import annotations

import hashlib
import json
import ssl

import httpx
import openai
import pytest
from cryptography import x509

from conclave.runtime.endpoint.proxy import AttestedProxy, ThreadedProxy
from conclave.runtime.endpoint.receipt import (RECEIPT_HEADER, ReceiptError, make_receipt,
                                               parse_receipt, receipt_in_stream, sha256_hex,
                                               signed_part, verify_receipt)
from conclave.runtime.endpoint.tls import generate_head_identity
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.report import ReportSigner
from conclave.runtime.serving.front import HeadFront
from conclave.runtime.serving.front_report import RunReportState
from conclave.runtime.serving.receipts import ReceiptIssuer

from front_support import API_KEY, Deployment, run_cli

KEY = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def _body(stream: bool = False) -> bytes:
    return json.dumps({"model": "smollm2", "stream": stream,
                       "messages": [{"role": "user", "content": "capital of France?"}]}).encode()


def _http(front) -> httpx.Client:
    return httpx.Client(base_url=front.url, verify=ssl.create_default_context(cafile=str(front.cert_path)),
                        timeout=10)


def _complete(front, *, stream: bool = False) -> tuple[bytes, bytes, dict, bytes]:
    """(request body, exact response body, receipt object, the run report it names)."""
    body = _body(stream)
    with _http(front) as http:
        if stream:
            with http.stream("POST", "/v1/chat/completions", headers=KEY, content=body) as r:
                raw = b"".join(r.iter_raw())
            assert r.status_code == 200 and RECEIPT_HEADER.lower() not in r.headers
            doc = receipt_in_stream(raw)
        else:
            r = http.post("/v1/chat/completions", headers=KEY, content=body)
            assert r.status_code == 200
            raw = r.content
            doc = parse_receipt(r.headers[RECEIPT_HEADER])
        assert doc is not None
        report = http.get(f"/v1/report/{doc['receipt']['report_sha256']}")
    assert report.status_code == 200
    return body, raw, doc, report.content


def _reason(**kw) -> str:
    with pytest.raises(ReceiptError) as err:
        verify_receipt(**kw)
    return err.value.reason


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_completion_carries_a_receipt_that_verifies(make_front, deployment, stream):
    front = make_front()
    body, raw, doc, report = _complete(front, stream=stream)
    ok = verify_receipt(doc, request=body, response=raw, report=report, manifest=deployment.manifest,
                        attested_key=front.report.public_key)
    assert ok.key_attested and ok.report is not None
    assert ok.receipt.model_digest == deployment.manifest.model_digest
    assert ok.receipt.response_sha256 == sha256_hex(signed_part(raw))
    assert [s.node for s in ok.report.report.stages] == ["node-0", "node-1"]
    if stream:   # the receipt event comes right before [DONE], and covers every byte before it
        events = [e for e in raw.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]" and b"conclave_receipt" in events[-2]
        assert signed_part(raw) == b"".join(e + b"\n\n" for e in events[:-2])


def test_each_change_fails_with_its_own_reason(make_front, deployment):
    front = make_front()
    body, raw, doc, report = _complete(front)
    good = dict(doc=doc, request=body, response=raw, report=report, manifest=deployment.manifest,
                attested_key=front.report.public_key)

    def flip(data: bytes, at: int) -> bytes:
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]

    assert _reason(**{**good, "request": flip(body, 10)}) == "receipt_request_mismatch"
    assert _reason(**{**good, "response": flip(raw, len(raw) // 2)}) == "receipt_response_mismatch"
    assert _reason(**{**good, "report": flip(report, len(report) // 2)}) == "receipt_report_mismatch"
    forged = {**doc, "receipt": {**doc["receipt"], "time": "2001-01-01T00:00:00Z"}}
    assert _reason(**{**good, "doc": forged}) == "receipt_signature_invalid"
    assert _reason(**{**good, "doc": {"receipt": {}}}) == "malformed"
    # a key the head's evidence does not bind signs the right digests and the right report
    rogue = make_receipt(ReportSigner.generate(), request_sha256=sha256_hex(body), response_sha256=sha256_hex(raw),
                         model_digest=deployment.manifest.model_digest,
                         report_sha256=doc["receipt"]["report_sha256"])
    assert _reason(**{**good, "doc": rogue}) == "receipt_key_not_attested"
    assert _reason(**{**good, "doc": rogue, "report": None}) == "receipt_key_not_attested"


def test_a_receipt_from_another_cluster_is_foreign(make_front, deployment, vllm, tmp_path):
    ours = make_front()
    # another head serving the same deployment: its own report key
    twin = make_front()
    body, raw, doc, report = _complete(twin)
    assert _reason(doc=doc, request=body, response=raw, report=report, manifest=deployment.manifest,
                   attested_key=ours.report.public_key) == "receipt_foreign_cluster"
    # another deployment altogether (other owner, other manifest)
    other = Deployment.create()
    identity = generate_head_identity(["127.0.0.1"])
    signer = ReportSigner.generate()
    state = RunReportState(manifest=other.manifest, signer=signer)
    state.set_shards_from_model_manifest(other.model_manifest)
    front = HeadFront(builder=other.builder(identity.spki_sha256, signer.public_key), report=state,
                      upstream=vllm.address, identity=identity)
    front.on_peer_admitted(**other.worker_admission())
    front.start_in_thread()
    try:
        front.cert_path = front.write_public_cert(tmp_path / "other.crt")
        body, raw, doc, report = _complete(front)
    finally:
        front.stop_thread()
    assert _reason(doc=doc, request=body, response=raw, report=report, manifest=deployment.manifest,
                   attested_key=ours.report.public_key) == "receipt_foreign_cluster"


def test_reports_are_kept_so_old_receipts_verify_after_the_cluster_changed(make_front, deployment):
    front = make_front()
    body, raw, doc, report = _complete(front)
    _, _, again, _ = _complete(front)
    assert again["receipt"]["report_sha256"] == doc["receipt"]["report_sha256"]   # re-signed only on change
    front.on_peer_evicted("node-1", "reattestation_failed")
    front.on_peer_admitted(**deployment.worker_admission())
    _, _, later, _ = _complete(front)
    assert later["receipt"]["report_sha256"] != doc["receipt"]["report_sha256"]
    with _http(front) as http:
        kept = http.get(f"/v1/report/{doc['receipt']['report_sha256']}")
        missing = http.get("/v1/report/" + "0" * 64)
        post = http.post(f"/v1/report/{doc['receipt']['report_sha256']}")
    assert kept.status_code == 200 and kept.content == report
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "report_not_found"
    assert post.status_code == 405
    assert len(front.receipts.archive) == 2


def test_cli_receipt_verify(make_front, files, deployment, tmp_path):
    front = make_front()
    man, root = files
    body, raw, doc, report = _complete(front, stream=True)
    req, resp, rec = tmp_path / "req.json", tmp_path / "resp.sse", tmp_path / "receipt.json"
    req.write_bytes(body)
    resp.write_bytes(raw)
    rec.write_text(json.dumps({"conclave_receipt": doc}))
    pin = ["--url", front.url, "--manifest", str(man), "--sim-root", str(root),
           "--owner-fingerprint", deployment.manifest.owner_fingerprint]
    code, out, err = run_cli("receipt", "verify", "--request", str(req), "--response", str(resp),
                             "--receipt", str(rec), *pin, "--json")
    assert code == 0 and out["ok"] and out["key_attested"] and out["report_checked"], err
    # the receipt inside the saved stream, and a pinned report key instead of a live endpoint
    rep = tmp_path / "report.json"
    rep.write_bytes(report)
    code, out, _ = run_cli("receipt", "verify", "--request", str(req), "--response", str(resp),
                           "--report", str(rep), "--report-pubkey", keys.b64(front.report.public_key),
                           "--json")
    assert code == 0 and out["ok"]
    resp.write_bytes(raw.replace(b"Paris", b"Paros", 1))
    code, out, _ = run_cli("receipt", "verify", "--request", str(req), "--response", str(resp),
                           "--receipt", str(rec), *pin, "--json")
    assert code == 2 and out["reason"] == "receipt_response_mismatch"
    code, out, _ = run_cli("receipt", "verify", "--request", str(req), "--response", str(resp), "--json")
    assert code == 1 and out["reason"] == "receipt_key_unknown"     # no key source: refuses


class RogueIssuer(ReceiptIssuer):
    """Signs receipts with a key the head's evidence does not bind."""

    def __init__(self, real: ReceiptIssuer):
        super().__init__(real.report, real.archive)
        self.rogue = ReportSigner.generate()

    def issue(self, request_body: bytes, response_sha256: str) -> dict:
        return make_receipt(self.rogue, request_sha256=hashlib.sha256(request_body).hexdigest(),
                            response_sha256=response_sha256, model_digest=self.report.manifest.model_digest,
                            report_sha256=self.archive.current())


def _proxy(front, deployment) -> ThreadedProxy:
    roots = x509.load_pem_x509_certificates(deployment.root.cert_pem)
    return ThreadedProxy(AttestedProxy(front.url, deployment.manifest, trusted_roots=roots, timeout=10))


def test_the_proxy_passes_good_receipts_and_refuses_bad_ones(make_front, deployment):
    front = make_front()
    with _proxy(front, deployment) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0, timeout=10)
        reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "The capital of France is Paris."
        text = [c.choices[0].delta.content for c in client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices]
        assert "".join(text) == "The capital of France is Paris."

        front.guard.receipts = RogueIssuer(front.guard.receipts)
        with httpx.Client(base_url=proxy.url, timeout=10) as http:
            r = http.post("/v1/chat/completions", headers=KEY, content=_body())
            assert r.status_code == 502 and r.json()["error"]["code"] == "receipt_key_not_attested"
            assert "Paris" not in r.text
            with http.stream("POST", "/v1/chat/completions", headers=KEY, content=_body(True)) as s:
                events = [line for line in s.iter_lines() if line]
        assert events[-1] != "data: [DONE]"
        assert json.loads(events[-1][len("data: "):])["error"]["code"] == "receipt_key_not_attested"
        with pytest.raises(openai.APIError) as err:
            for _ in client.chat.completions.create(model="smollm2", stream=True,
                                                    messages=[{"role": "user", "content": "hi"}]):
                pass
        assert "receipt" in str(err.value)


def test_the_proxy_logs_a_successful_verification_at_info(make_front, deployment, caplog):
    front = make_front()
    with caplog.at_level("INFO", logger="conclave.proxy"):
        with _proxy(front, deployment):
            pass
    ok = [r for r in caplog.records if r.getMessage() == "upstream verification: ok"]
    assert ok and all(r.levelname == "INFO" for r in ok)
