"""The attestation bundle the head serves at GET /v1/attestation?nonce=HEX, and its parser.

    {"version": 1, "nonce": hex, "manifest": {signed manifest file object},
     "model_digest": hex, "stages": [manifest stages],
     "nodes": [{"name", "role", "owner", "tee",
                "evidence": b64 (CPU evidence), "certs": [b64 DER], "collateral": b64 | null,
                "gpu_evidence": [{"evidence": b64, "certs": [b64 DER], "collateral": b64 | null}],
                "freshness": "fresh" | "cached", "collected_at": RFC 3339 | null,
                "report_data_inputs": {"purpose", "wg_public_key": b64, "hpke_public_key": b64,
                                       "nonce": hex, "extra": {name: b64}},
                "enrolment": b64 | null}],
     "head": {"name", "tls_spki_sha256": hex, "report_pubkey": b64}}

The head's entry is always fresh: its evidence is produced for the client's nonce with purpose
conclave/head/v1 and extra {"tls_spki_sha256", "report_key", "statement_key"}. Worker entries are usually the
evidence the head admitted them with ("cached", purpose conclave/node/v1, the head's admission
nonce, and whatever extra the admission binding used, e.g. node_id/role/overlay_address).
GPU items are bound through binding.gpu_nonce_for(the node's REPORT_DATA). Collateral travels
with the evidence (it is vendor-signed). `enrolment` is the stage owner's signed enrolment of the
node's per-boot keys (runtime/manifest/enrolment.py wire bytes, public): the one a worker was
admitted with, and the head's own (null until its owner enrolled it). Nothing here is trusted
until verify.verify_bundle says so (it checks each enrolment against the keys the binding names).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from conclave.runtime.attestation.core import TeeType
from conclave.runtime.endpoint.binding import (PURPOSE_HEAD, PURPOSE_NODE, head_extra,
                                               head_report_data)
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.canonical import CanonicalError, strict_loads
from conclave.runtime.manifest.document import VerifiedManifest, rfc3339

BUNDLE_VERSION = 1
MAX_BUNDLE_LEN = 16 * 1024 * 1024
MIN_NONCE_LEN, MAX_NONCE_LEN = 16, 64
FRESHNESS = ("fresh", "cached")
MAX_GPUS = 8
MAX_CERTS = 16
MAX_EXTRA = 16
MAX_EXTRA_VALUE = 1024
MAX_ENROLMENT_LEN = 8192   # as runtime.manifest.enrolment.MAX_ENROLMENT_LEN
CPU_TEES = (TeeType.TDX, TeeType.SNP, TeeType.SIM)


MAX_NODES_LIFECYCLE = 64

class BundleMalformed(ConclaveError):
    def __init__(self, message: str):
        super().__init__("malformed", message, exit_code=ExitCode.MALFORMED)


@dataclass(frozen=True)
class EvidenceBlob:
    """One piece of evidence with what verifying it needs (extra certificates, collateral)."""

    data: bytes
    certs: tuple[bytes, ...] = ()      # DER
    collateral: bytes | None = None

    def to_json(self) -> dict:
        return {"evidence": keys.b64(self.data), "certs": [keys.b64(c) for c in self.certs],
                "collateral": keys.b64(self.collateral) if self.collateral else None}


@dataclass(frozen=True)
class NodeEvidence:
    """A node's evidence for one REPORT_DATA: one CPU TEE item plus its GPUs' items."""

    tee: str
    cpu: EvidenceBlob
    gpus: tuple[EvidenceBlob, ...] = ()

    @classmethod
    def from_items(cls, items: Iterable[Any]) -> "NodeEvidence":
        """From objects with .tee/.data/.certs/.collateral (overlay EvidenceItemData, proto items)."""
        cpu, gpus = [], []
        for item in items:
            blob = EvidenceBlob(bytes(item.data), tuple(bytes(c) for c in item.certs),
                                bytes(item.collateral) or None)
            tee = TeeType(str(item.tee))
            (cpu if tee in CPU_TEES else gpus).append((tee, blob))
            if tee not in CPU_TEES and tee != TeeType.NVGPU:
                raise ValueError(f"unsupported evidence item {tee}")
        if len(cpu) != 1:
            raise ValueError("need exactly one CPU TEE evidence item")
        return cls(str(cpu[0][0]), cpu[0][1], tuple(b for _, b in gpus))


@dataclass(frozen=True)
class BindingInputs:
    """The public inputs a node's REPORT_DATA commits to (what the verifier recomputes from)."""

    purpose: str
    wg_public_key: bytes
    hpke_public_key: bytes
    nonce: bytes
    extra: Mapping[str, bytes]

    def to_json(self) -> dict:
        return {"purpose": self.purpose, "wg_public_key": keys.b64(self.wg_public_key),
                "hpke_public_key": keys.b64(self.hpke_public_key), "nonce": self.nonce.hex(),
                "extra": {k: keys.b64(v) for k, v in sorted(self.extra.items())}}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "BindingInputs":
        if not isinstance(obj, dict) or set(obj) != {"purpose", "wg_public_key", "hpke_public_key",
                                                      "nonce", "extra"}:
            raise BundleMalformed(f"{where}.report_data_inputs has wrong fields")
        if obj["purpose"] not in (PURPOSE_HEAD, PURPOSE_NODE):
            raise BundleMalformed(f"{where}: unknown binding purpose")
        raw_extra = obj["extra"]
        if not isinstance(raw_extra, dict) or len(raw_extra) > MAX_EXTRA or \
                not all(isinstance(k, str) and k for k in raw_extra):
            raise BundleMalformed(f"{where}.extra must map up to {MAX_EXTRA} names to base64")
        try:
            wg = keys.unb64(obj["wg_public_key"], "wg_public_key", length=32)
            hpke = keys.unb64(obj["hpke_public_key"], "hpke_public_key")
            nonce = _hex(obj["nonce"], f"{where}.nonce")
            extra = {k: keys.unb64(v, f"extra[{k}]") for k, v in raw_extra.items()}
        except ValueError as exc:
            raise BundleMalformed(f"{where}: {exc}") from None
        if not MIN_NONCE_LEN <= len(nonce) <= MAX_NONCE_LEN:
            raise BundleMalformed(f"{where}: nonce must be 16 to 64 bytes")
        if any(len(v) > MAX_EXTRA_VALUE for v in extra.values()):
            raise BundleMalformed(f"{where}: extra value too long")
        return cls(obj["purpose"], wg, hpke, nonce, extra)


@dataclass(frozen=True)
class NodeEntry:
    name: str
    role: str
    owner: str
    evidence: NodeEvidence
    freshness: str
    inputs: BindingInputs
    collected_at: str | None = None
    enrolment: bytes | None = None    # the stage owner's enrolment of this boot's keys (wire bytes)

    @property
    def tee(self) -> str:
        return self.evidence.tee

    def to_json(self) -> dict:
        cpu = self.evidence.cpu.to_json()
        return {"name": self.name, "role": self.role, "owner": self.owner, "tee": self.tee,
                "evidence": cpu["evidence"], "certs": cpu["certs"], "collateral": cpu["collateral"],
                "gpu_evidence": [g.to_json() for g in self.evidence.gpus],
                "freshness": self.freshness, "collected_at": self.collected_at,
                "report_data_inputs": self.inputs.to_json(),
                "enrolment": keys.b64(self.enrolment) if self.enrolment else None}


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


def _blob(obj: Mapping[str, Any], where: str) -> EvidenceBlob:
    certs = obj["certs"]
    if not isinstance(certs, list) or len(certs) > MAX_CERTS:
        raise BundleMalformed(f"{where}.certs must be a list of at most {MAX_CERTS}")
    try:
        data = keys.unb64(obj["evidence"], f"{where}.evidence")
        der = tuple(keys.unb64(c, f"{where}.certs[]") for c in certs)
        coll = obj["collateral"]
        collateral = None if coll is None else keys.unb64(coll, f"{where}.collateral")
    except ValueError as exc:
        raise BundleMalformed(str(exc)) from None
    return EvidenceBlob(data, der, collateral)


_NODE_FIELDS = {"name", "role", "owner", "tee", "evidence", "certs", "collateral", "gpu_evidence",
                "freshness", "collected_at", "report_data_inputs", "enrolment"}


def _node(n: Any, where: str) -> NodeEntry:
    if not isinstance(n, dict) or set(n) != _NODE_FIELDS:
        raise BundleMalformed(f"{where} must have exactly " + ", ".join(sorted(_NODE_FIELDS)))
    if not all(isinstance(n[k], str) and n[k] for k in ("name", "role", "owner", "tee")):
        raise BundleMalformed(f"{where}: name, role, owner, tee must be strings")
    if n["freshness"] not in FRESHNESS:
        raise BundleMalformed(f"{where}.freshness must be fresh or cached")
    if n["collected_at"] is not None and not isinstance(n["collected_at"], str):
        raise BundleMalformed(f"{where}.collected_at must be a string or null")
    gpus = n["gpu_evidence"]
    if not isinstance(gpus, list) or len(gpus) > MAX_GPUS:
        raise BundleMalformed(f"{where}.gpu_evidence must be a list of at most {MAX_GPUS}")
    gpu_blobs = []
    for i, g in enumerate(gpus):
        if not isinstance(g, dict) or set(g) != {"evidence", "certs", "collateral"}:
            raise BundleMalformed(f"{where}.gpu_evidence[{i}] has wrong fields")
        gpu_blobs.append(_blob(g, f"{where}.gpu_evidence[{i}]"))
    evidence = NodeEvidence(n["tee"], _blob(n, where), tuple(gpu_blobs))
    enrolment = None
    if n["enrolment"] is not None:
        try:
            enrolment = keys.unb64(n["enrolment"], f"{where}.enrolment")
        except ValueError as exc:
            raise BundleMalformed(str(exc)) from None
        if not enrolment or len(enrolment) > MAX_ENROLMENT_LEN:
            raise BundleMalformed(f"{where}.enrolment must be 1 to {MAX_ENROLMENT_LEN} bytes")
    return NodeEntry(n["name"], n["role"], n["owner"], evidence, n["freshness"],
                     BindingInputs.from_json(n["report_data_inputs"], where), n["collected_at"], enrolment)


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
    if not isinstance(obj, Mapping) or set(obj) - {"lifecycle"} != want:
        raise BundleMalformed("attestation bundle must have exactly " + ", ".join(sorted(want))
                              + " (and optionally lifecycle)")
    lifecycle = obj.get("lifecycle")
    if lifecycle is not None and (not isinstance(lifecycle, dict) or len(lifecycle) > MAX_NODES_LIFECYCLE
                                  or not all(isinstance(v, dict) and isinstance(v.get("state"), str)
                                             for v in lifecycle.values())):
        raise BundleMalformed("lifecycle must map stage names to {state, reasons}")
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
    nodes = tuple(_node(n, f"nodes[{i}]") for i, n in enumerate(obj["nodes"]))
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise BundleMalformed("node names in the bundle must be unique")
    return ParsedBundle(obj["version"], nonce, dict(obj["manifest"]), obj["model_digest"],
                        list(obj["stages"]), nodes, head_info)


def nonce_from_query(value: str | None) -> bytes:
    """The client's nonce from ?nonce=HEX (16 to 64 bytes); ValueError -> answer HTTP 400."""
    if not value or len(value) > 2 * MAX_NONCE_LEN:
        raise ValueError("nonce query parameter missing or too long")
    nonce = bytes.fromhex(value)
    if len(nonce) < MIN_NONCE_LEN:
        raise ValueError("nonce must be 16 to 64 bytes")
    return nonce


def respond(builder: "BundleBuilder", query_nonce: str | None) -> tuple[int, dict]:
    """Framework-neutral handler body for GET /v1/attestation?nonce=HEX: (HTTP status, JSON body)."""
    try:
        nonce = nonce_from_query(query_nonce)
    except ValueError as exc:
        return 400, {"error": {"message": str(exc), "type": "invalid_request_error",
                               "code": "bad_nonce", "param": "nonce"}}
    return 200, builder.build(nonce)


def _as_node_evidence(value: bytes | NodeEvidence, tee: str | None) -> NodeEvidence:
    if isinstance(value, NodeEvidence):
        return value
    if tee is None:
        raise ValueError("tee is required when evidence is raw bytes")
    return NodeEvidence(str(tee), EvidenceBlob(bytes(value)))


class BundleBuilder:
    """Head side: assembles a bundle per client nonce.

    attest(report_data) -> CPU evidence bytes, or a NodeEvidence (CPU + GPU items; GPU items over
    binding.gpu_nonce_for(report_data)), is the head's TEE: e.g.
    `lambda rd: NodeEvidence.from_items(source.collect(rd))` with an overlay EvidenceSource.
    Worker entries are registered as they are admitted (set_peer) and replaced on re-attestation
    or dropped on eviction (drop_peer): an evicted stage makes clients refuse (node_missing).
    statement_key: the head's statement public key, bound into its fresh evidence so clients can
    match the head's enrolment (which covers it) against bound keys; head_enrolment() -> the head
    owner's enrolment bytes (b"" until enrolled), read per bundle (e.g. `lambda: agent.enrolment`).
    """

    def __init__(self, *, manifest: VerifiedManifest, head_node: str, tee: str | None,
                 attest: Callable[[bytes], bytes | NodeEvidence], wg_public_key: bytes,
                 hpke_public_key: bytes, tls_spki_sha256: bytes, report_key: bytes,
                 statement_key: bytes | None = None,
                 head_enrolment: Callable[[], bytes | None] | None = None):
        stage = manifest.stage_for(head_node)
        if stage is None or stage.role != "head":
            raise ValueError(f"{head_node!r} is not the head stage of the manifest")
        self._manifest = manifest
        self.lifecycle_source = None   # () -> {stage: {"state", "reasons"}}: each stage's lifecycle state
        self._stage = stage
        self._tee = None if tee is None else str(tee)
        self._attest = attest
        self._wg, self._hpke = bytes(wg_public_key), bytes(hpke_public_key)
        self._tls = bytes(tls_spki_sha256)
        self._report_key = bytes(report_key)
        self._statement_key = bytes(statement_key) if statement_key else None
        self._head_enrolment = head_enrolment
        self._peers: dict[str, NodeEntry] = {}
        self._lock = threading.Lock()

    def set_peer(self, name: str, *, evidence: bytes | NodeEvidence, wg_public_key: bytes,
                 hpke_public_key: bytes, nonce: bytes, tee: str | None = None,
                 extra: Mapping[str, bytes] | None = None,
                 collected_at: datetime | None = None, enrolment: bytes | None = None) -> None:
        """Record the evidence a worker was admitted with, the exact binding inputs used, and the
        owner enrolment it presented (AttestReply.enrolment)."""
        stage = self._manifest.stage_for(name)
        if stage is None or stage.role == "head":
            raise ValueError(f"{name!r} is not a worker stage of the manifest")
        entry = NodeEntry(name, stage.role, stage.owner, _as_node_evidence(evidence, tee), "cached",
                          BindingInputs(PURPOSE_NODE, bytes(wg_public_key), bytes(hpke_public_key),
                                        bytes(nonce), {k: bytes(v) for k, v in (extra or {}).items()}),
                          rfc3339(collected_at) if collected_at else None, bytes(enrolment or b"") or None)
        with self._lock:
            self._peers[name] = entry

    def drop_peer(self, name: str) -> None:
        with self._lock:
            self._peers.pop(name, None)

    # -- small read-only hooks for the head's front server (serving.front) ----------------------
    @property
    def manifest(self) -> VerifiedManifest:
        return self._manifest

    @property
    def head_node(self) -> str:
        return self._stage.node

    def head_enrolment(self) -> bytes | None:
        """The head owner's enrolment of the head's keys as of now (None: not enrolled yet)."""
        if self._head_enrolment is None:
            return None
        return bytes(self._head_enrolment() or b"") or None

    def peer_enrolment(self, name: str) -> bytes | None:
        """The enrolment worker `name` was last admitted with (None: none registered)."""
        with self._lock:
            entry = self._peers.get(name)
            return entry.enrolment if entry is not None else None

    def _head_rd(self, nonce: bytes) -> bytes:
        return head_report_data(manifest_digest=self._manifest.digest, wg_public_key=self._wg,
                                hpke_public_key=self._hpke, nonce=nonce, tls_spki_sha256=self._tls,
                                report_key=self._report_key, statement_key=self._statement_key)

    def peer_names(self) -> frozenset[str]:
        """Worker stages whose admission evidence is currently registered."""
        with self._lock:
            return frozenset(self._peers)

    def missing_stages(self) -> list[str]:
        """Worker stages of the manifest without registered evidence (clients would see node_missing)."""
        with self._lock:
            return [s.node for s in self._manifest.stages if s.role != "head" and s.node not in self._peers]

    def attest_head(self, nonce: bytes) -> NodeEvidence:
        """The head's own evidence for `nonce` (same binding as build(); e.g. for the run report)."""
        rd = self._head_rd(nonce)
        return _as_node_evidence(self._attest(rd), self._tee)

    def build(self, nonce: bytes, *, now: datetime | None = None) -> dict:
        if not MIN_NONCE_LEN <= len(nonce) <= MAX_NONCE_LEN:
            raise ValueError("nonce must be 16 to 64 bytes")
        rd = self._head_rd(nonce)
        head = NodeEntry(self._stage.node, "head", self._stage.owner,
                         _as_node_evidence(self._attest(rd), self._tee), "fresh",
                         BindingInputs(PURPOSE_HEAD, self._wg, self._hpke, bytes(nonce),
                                       head_extra(tls_spki_sha256=self._tls, report_key=self._report_key,
                                                  statement_key=self._statement_key)),
                         rfc3339(now or datetime.now(timezone.utc)), self.head_enrolment())
        with self._lock:
            peers = dict(self._peers)
        nodes = [head if s.role == "head" else peers[s.node]
                 for s in self._manifest.stages if s.role == "head" or s.node in peers]
        out = {"version": BUNDLE_VERSION, "nonce": nonce.hex(),
               "manifest": json.loads(self._manifest.raw),
               "model_digest": self._manifest.model_digest,
               "stages": [s.to_json() for s in self._manifest.stages],
               "nodes": [n.to_json() for n in nodes],
               "head": HeadInfo(self._stage.node, self._tls, self._report_key).to_json()}
        if self.lifecycle_source is not None:
            # informational (what each stage last said of itself; the evidence above is what is verified)
            out["lifecycle"] = {name: {"state": str(v.get("state")), "reasons": list(v.get("reasons") or [])}
                                for name, v in self.lifecycle_source().items() if v.get("state")}
        return out
