"""The attestation bundle the head serves at GET /v1/attestation?nonce=HEX, and its parser.

    {"version": 1, "nonce": hex, "manifest": {signed manifest file object},
     "model_digest": hex, "stages": [manifest stages],
     "nodes": [{"name", "role", "owner", "tee", "evidence": b64, "freshness": "fresh"|"cached",
                "collected_at": RFC 3339 | null,
                "report_data_inputs": {"purpose", "wg_public_key": b64, "hpke_public_key": b64,
                                       "nonce": hex, ["tls_spki_sha256": hex, "report_key": b64]}}],
     "head": {"name", "tls_spki_sha256": hex, "report_pubkey": b64}}

The head's entry is always fresh: its evidence is produced for the client's nonce with purpose
conclave/head/v1 and binds the TLS and report keys. Worker entries are usually the evidence the
head admitted them with ("cached", purpose conclave/node/v1, the head's admission nonce).
Everything in the bundle is public; nothing here is trusted until verify.verify_bundle says so.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from conclave.runtime.endpoint.binding import PURPOSE_HEAD, PURPOSE_NODE, head_report_data
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest.canonical import CanonicalError, strict_loads
from conclave.runtime.manifest.document import VerifiedManifest, rfc3339

BUNDLE_VERSION = 1
MAX_BUNDLE_LEN = 16 * 1024 * 1024
MIN_NONCE_LEN, MAX_NONCE_LEN = 16, 64
FRESHNESS = ("fresh", "cached")


class BundleMalformed(ConclaveError):
    def __init__(self, message: str):
        super().__init__("malformed", message, exit_code=ExitCode.MALFORMED)


@dataclass(frozen=True)
class BindingInputs:
    """The public inputs a node's REPORT_DATA commits to (what the verifier recomputes from)."""

    purpose: str
    wg_public_key: bytes
    hpke_public_key: bytes
    nonce: bytes
    tls_spki_sha256: bytes | None = None   # head only
    report_key: bytes | None = None        # head only

    def to_json(self) -> dict:
        out = {"purpose": self.purpose, "wg_public_key": keys.b64(self.wg_public_key),
               "hpke_public_key": keys.b64(self.hpke_public_key), "nonce": self.nonce.hex()}
        if self.tls_spki_sha256 is not None:
            out["tls_spki_sha256"] = self.tls_spki_sha256.hex()
        if self.report_key is not None:
            out["report_key"] = keys.b64(self.report_key)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "BindingInputs":
        base = {"purpose", "wg_public_key", "hpke_public_key", "nonce"}
        head = base | {"tls_spki_sha256", "report_key"}
        if not isinstance(obj, dict) or set(obj) not in (base, head):
            raise BundleMalformed(f"{where}.report_data_inputs has wrong fields")
        if obj["purpose"] not in (PURPOSE_HEAD, PURPOSE_NODE):
            raise BundleMalformed(f"{where}: unknown binding purpose")
        try:
            wg = keys.unb64(obj["wg_public_key"], "wg_public_key", length=32)
            hpke = keys.unb64(obj["hpke_public_key"], "hpke_public_key")
            nonce = _hex(obj["nonce"], f"{where}.nonce")
            tls = _hex(obj["tls_spki_sha256"], f"{where}.tls_spki_sha256", 32) if "tls_spki_sha256" in obj else None
            rk = keys.unb64(obj["report_key"], "report_key", length=32) if "report_key" in obj else None
        except ValueError as exc:
            raise BundleMalformed(f"{where}: {exc}") from None
        if not MIN_NONCE_LEN <= len(nonce) <= MAX_NONCE_LEN:
            raise BundleMalformed(f"{where}: nonce must be 16 to 64 bytes")
        return cls(obj["purpose"], wg, hpke, nonce, tls, rk)


@dataclass(frozen=True)
class NodeEntry:
    name: str
    role: str
    owner: str
    tee: str
    evidence: bytes
    freshness: str
    inputs: BindingInputs
    collected_at: str | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "role": self.role, "owner": self.owner, "tee": self.tee,
                "evidence": keys.b64(self.evidence), "freshness": self.freshness,
                "collected_at": self.collected_at, "report_data_inputs": self.inputs.to_json()}


@dataclass(frozen=True)
class HeadInfo:
    name: str
    tls_spki_sha256: bytes
    report_pubkey: bytes

    def to_json(self) -> dict:
        return {"name": self.name, "tls_spki_sha256": self.tls_spki_sha256.hex(),
                "report_pubkey": keys.b64(self.report_pubkey)}


@dataclass(frozen=True)
class ParsedBundle:
    version: int
    nonce: bytes
    manifest_file: dict       # the signed manifest file object as served
    model_digest: str
    stages: list
    nodes: tuple[NodeEntry, ...]
    head: HeadInfo


def _hex(value: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be hex")
    try:
        out = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} must be hex") from None
    if length is not None and len(out) != length:
        raise ValueError(f"{what} must be {length} bytes")
    return out


def parse_bundle(data: bytes | Mapping[str, Any]) -> ParsedBundle:
    """Structure only. Raises BundleMalformed (reason malformed)."""
    if isinstance(data, (bytes, bytearray)):
        if len(data) > MAX_BUNDLE_LEN:
            raise BundleMalformed("attestation bundle too large")
        try:
            obj = strict_loads(bytes(data))
        except CanonicalError as exc:
            raise BundleMalformed(f"attestation bundle: {exc}") from None
    else:
        obj = data
    want = {"version", "nonce", "manifest", "model_digest", "stages", "nodes", "head"}
    if not isinstance(obj, Mapping) or set(obj) != want:
        raise BundleMalformed("attestation bundle must have exactly " + ", ".join(sorted(want)))
    if obj["version"] != BUNDLE_VERSION or isinstance(obj["version"], bool):
        raise BundleMalformed(f"unsupported bundle version {obj['version']!r}")
    if not isinstance(obj["manifest"], dict) or not isinstance(obj["model_digest"], str) \
            or not isinstance(obj["stages"], list):
        raise BundleMalformed("manifest, model_digest or stages have wrong types")
    try:
        nonce = _hex(obj["nonce"], "nonce")
        head = obj["head"]
        if not isinstance(head, dict) or set(head) != {"name", "tls_spki_sha256", "report_pubkey"} \
                or not isinstance(head["name"], str):
            raise ValueError("head must have exactly name, tls_spki_sha256, report_pubkey")
        head_info = HeadInfo(head["name"], _hex(head["tls_spki_sha256"], "head.tls_spki_sha256", 32),
                             keys.unb64(head["report_pubkey"], "head.report_pubkey", length=32))
    except ValueError as exc:
        raise BundleMalformed(str(exc)) from None
    if not isinstance(obj["nodes"], list) or not obj["nodes"]:
        raise BundleMalformed("nodes must be a non-empty list")
    nodes = []
    for i, n in enumerate(obj["nodes"]):
        where = f"nodes[{i}]"
        want_n = {"name", "role", "owner", "tee", "evidence", "freshness", "collected_at",
                  "report_data_inputs"}
        if not isinstance(n, dict) or set(n) != want_n:
            raise BundleMalformed(f"{where} must have exactly " + ", ".join(sorted(want_n)))
        if not all(isinstance(n[k], str) and n[k] for k in ("name", "role", "owner", "tee")):
            raise BundleMalformed(f"{where}: name, role, owner, tee must be strings")
        if n["freshness"] not in FRESHNESS:
            raise BundleMalformed(f"{where}.freshness must be fresh or cached")
        if n["collected_at"] is not None and not isinstance(n["collected_at"], str):
            raise BundleMalformed(f"{where}.collected_at must be a string or null")
        try:
            evidence = keys.unb64(n["evidence"], f"{where}.evidence")
        except ValueError as exc:
            raise BundleMalformed(str(exc)) from None
        nodes.append(NodeEntry(n["name"], n["role"], n["owner"], n["tee"], evidence, n["freshness"],
                               BindingInputs.from_json(n["report_data_inputs"], where),
                               n["collected_at"]))
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise BundleMalformed("node names in the bundle must be unique")
    return ParsedBundle(obj["version"], nonce, dict(obj["manifest"]), obj["model_digest"],
                        list(obj["stages"]), tuple(nodes), head_info)


class BundleBuilder:
    """Head side: assembles a bundle per client nonce.

    attest(report_data) -> evidence bytes is the head's TEE (configfs-tsm, SEV/TDX guest device,
    or a SimulatedAttester.evidence). Worker entries are registered as they are admitted
    (set_peer) and replaced on re-attestation (or dropped on eviction: drop_peer).
    """

    def __init__(self, *, manifest: VerifiedManifest, head_node: str, tee: str,
                 attest: Callable[[bytes], bytes], wg_public_key: bytes, hpke_public_key: bytes,
                 tls_spki_sha256: bytes, report_key: bytes):
        stage = manifest.stage_for(head_node)
        if stage is None or stage.role != "head":
            raise ValueError(f"{head_node!r} is not the head stage of the manifest")
        self._manifest = manifest
        self._stage = stage
        self._tee = str(tee)
        self._attest = attest
        self._wg, self._hpke = bytes(wg_public_key), bytes(hpke_public_key)
        self._tls = bytes(tls_spki_sha256)
        self._report_key = bytes(report_key)
        self._peers: dict[str, NodeEntry] = {}
        self._lock = threading.Lock()

    def set_peer(self, name: str, *, tee: str, evidence: bytes, wg_public_key: bytes,
                 hpke_public_key: bytes, nonce: bytes, collected_at: datetime | None = None) -> None:
        stage = self._manifest.stage_for(name)
        if stage is None or stage.role == "head":
            raise ValueError(f"{name!r} is not a worker stage of the manifest")
        entry = NodeEntry(name, stage.role, stage.owner, str(tee), bytes(evidence), "cached",
                          BindingInputs(PURPOSE_NODE, bytes(wg_public_key), bytes(hpke_public_key),
                                        bytes(nonce)),
                          rfc3339(collected_at) if collected_at else None)
        with self._lock:
            self._peers[name] = entry

    def drop_peer(self, name: str) -> None:
        with self._lock:
            self._peers.pop(name, None)

    def build(self, nonce: bytes, *, now: datetime | None = None) -> dict:
        if not MIN_NONCE_LEN <= len(nonce) <= MAX_NONCE_LEN:
            raise ValueError("nonce must be 16 to 64 bytes")
        rd = head_report_data(manifest_digest=self._manifest.digest, wg_public_key=self._wg,
                              hpke_public_key=self._hpke, nonce=nonce,
                              tls_spki_sha256=self._tls, report_key=self._report_key)
        head = NodeEntry(self._stage.node, "head", self._stage.owner, self._tee, self._attest(rd),
                         "fresh", BindingInputs(PURPOSE_HEAD, self._wg, self._hpke, bytes(nonce),
                                                self._tls, self._report_key),
                         rfc3339(now or datetime.now(timezone.utc)))
        with self._lock:
            peers = dict(self._peers)
        nodes = [head if s.role == "head" else peers[s.node]
                 for s in self._manifest.stages if s.role == "head" or s.node in peers]
        return {"version": BUNDLE_VERSION, "nonce": nonce.hex(),
                "manifest": json.loads(self._manifest.raw),
                "model_digest": self._manifest.model_digest,
                "stages": [s.to_json() for s in self._manifest.stages],
                "nodes": [n.to_json() for n in nodes],
                "head": HeadInfo(self._stage.node, self._tls, self._report_key).to_json()}
