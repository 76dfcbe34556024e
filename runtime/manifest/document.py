"""The deployment manifest: what the deployment owner signs, and how every party checks it.

File format (JSON, any whitespace):
    {"manifest": {...content...}, "signature": b64(Ed25519 sig), "owner_key": b64(raw 32-byte key)}
Signed message: SIGNING_CONTEXT || canonical_json(content)   (domain-separated)
Digest:         SHA-256(canonical_json(content))               (bound into every node's REPORT_DATA)

Content (version 1; unknown fields are refused, so nothing unsigned-in-spirit slips in):
    version (1), created (RFC 3339 UTC), owner_key (b64, equals the outer owner_key),
    policy (dict for attestation.policy.Policy.from_dict), model_digest (64 hex),
    engine_digest (64 hex), owners [{name, key: b64 Ed25519 public key}],
    stages [{node, owner (an owners[].name), role: head|worker, layers: [start, end)}],
    overlay_cidr (IPv4 CIDR), rendezvous [endpoint strings]

Owners are the node owners (GPU providers). A stage names the one owner allowed to run it; a
node's claim to that stage counts only with an enrolment signed by that owner's key
(runtime/manifest/enrolment.py), so the owner a stage lists is what admission proves.

Checks run parse -> verify (signature, then the pinned owner). Only verification constructs a
VerifiedManifest. The trust anchor is the owner key the caller pins (a key or its fingerprint):
the key inside the file is only a claim until it matches the pin.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.errors import ConclaveError
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.canonical import CanonicalError, canonical_json, strict_loads
from conclave.runtime.reasons import exit_code_for
from conclave.runtime.reasons import ManifestReason  # noqa: F401 (re-export; the one registry)

MANIFEST_VERSION = 1
SIGNING_CONTEXT = b"conclave/deployment-manifest/v1\x00"
DEFAULT_OVERLAY_CIDR = "100.64.0.0/16"
ROLES = ("head", "worker")
MAX_FILE_LEN = 1024 * 1024
_CONTENT_KEYS = {"version", "created", "owner_key", "policy", "model_digest", "engine_digest",
                 "owners", "stages", "overlay_cidr", "rendezvous"}
_OPTIONAL_KEYS = {"model_source"}   # {"shards": path or URL root (stage K at ROOT/stage-K), "broker": HOST:PORT}
_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_OWNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
MAX_OWNERS = 256


class ManifestError(ConclaveError):
    """A manifest that must not be used. `reason` is one of ManifestReason."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message, exit_code=exit_code_for(reason))


def _malformed(message: str) -> ManifestError:
    return ManifestError(ManifestReason.MALFORMED, message)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: which node runs it, whose node it is, its role, layers [start, end)."""

    node: str
    owner: str
    role: str
    layer_start: int
    layer_end: int
    # GPUs that must attest for this stage (attestation.nvgpu_requirement); None: no GPU required
    gpus: Any = None

    def to_json(self) -> dict:
        out = {"node": self.node, "owner": self.owner, "role": self.role,
               "layers": [self.layer_start, self.layer_end]}
        if self.gpus is not None:
            out["gpus"] = self.gpus.to_json()
        return out

    @classmethod
    def from_json(cls, obj: Any, index: int = 0) -> "Stage":
        where = f"stages[{index}]"
        if not isinstance(obj, dict) or not {"node", "owner", "role", "layers"} <= set(obj) <= {
                "node", "owner", "role", "layers", "gpus"}:
            raise _malformed(f"{where} must have exactly node, owner, role, layers (and optionally gpus)")
        node, owner, role, layers = obj["node"], obj["owner"], obj["role"], obj["layers"]
        if not isinstance(node, str) or not _NODE_NAME.match(node):
            raise _malformed(f"{where}.node must be a DNS-label-like name (a-z, 0-9, '.', '-')")
        if not isinstance(owner, str) or not _OWNER_NAME.match(owner):
            raise _malformed(f"{where}.owner must be an owner name (1-128 of A-Z a-z 0-9 . _ @ -)")
        if role not in ROLES:
            raise _malformed(f"{where}.role must be one of {', '.join(ROLES)}")
        if (not isinstance(layers, list) or len(layers) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
                or not 0 <= layers[0] < layers[1]):
            raise _malformed(f"{where}.layers must be [start, end) with 0 <= start < end")
        gpus = None
        if "gpus" in obj:
            from conclave.runtime.attestation.nvgpu_requirement import GpuRequirement, RequirementError
            try:
                gpus = GpuRequirement.from_json(obj["gpus"])
            except RequirementError as exc:
                raise _malformed(f"{where}.{exc}") from None
        return cls(node, owner, role, layers[0], layers[1], gpus)

    @classmethod
    def parse_spec(cls, spec: str) -> "Stage":
        """CLI form NODE:OWNER:ROLE:START-END (END exclusive), e.g. node-0:alice:head:0-15."""
        parts = spec.split(":")
        if len(parts) != 4 or "-" not in parts[3]:
            raise _malformed(f"stage {spec!r} must look like NODE:OWNER:ROLE:START-END")
        start, _, end = parts[3].partition("-")
        try:
            layers = [int(start), int(end)]
        except ValueError:
            raise _malformed(f"stage {spec!r}: layer range must be integers") from None
        return cls.from_json({"node": parts[0], "owner": parts[1], "role": parts[2],
                              "layers": layers})


def _check_owners(raw: Any) -> dict[str, bytes]:
    """owners: [{"name", "key"}], non-empty, names unique; returns name -> raw Ed25519 public key."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_OWNERS:
        raise _malformed(f"owners must be a list of 1 to {MAX_OWNERS} owners")
    owners: dict[str, bytes] = {}
    for i, entry in enumerate(raw):
        where = f"owners[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"name", "key"}:
            raise _malformed(f"{where} must have exactly name, key")
        name = entry["name"]
        if not isinstance(name, str) or not _OWNER_NAME.match(name):
            raise _malformed(f"{where}.name must be 1-128 of A-Z a-z 0-9 . _ @ -")
        if name in owners:
            raise _malformed(f"owner names must be unique ({name!r} repeats)")
        try:
            owners[name] = keys.unb64(entry["key"], f"{where}.key", length=keys.PUBLIC_KEY_LEN)
            keys.load_public_key_raw(owners[name])
        except ValueError as exc:
            raise _malformed(str(exc)) from None
    return owners


def _check_stages(raw: Any, owners: Mapping[str, bytes]) -> tuple[Stage, ...]:
    if not isinstance(raw, list) or not raw:
        raise _malformed("stages must be a non-empty list")
    stages = tuple(Stage.from_json(s, i) for i, s in enumerate(raw))
    for i, s in enumerate(stages):
        if s.owner not in owners:
            raise _malformed(f"stages[{i}].owner {s.owner!r} is not one of the manifest's owners")
    names = [s.node for s in stages]
    if len(set(names)) != len(names):
        raise _malformed("stage node names must be unique")
    if sum(1 for s in stages if s.role == "head") != 1:
        raise _malformed("exactly one stage must have role head")
    expected_start = 0
    for i, s in enumerate(stages):
        if s.layer_start != expected_start:
            raise _malformed(f"stages[{i}] must start at layer {expected_start} (contiguous, in order)")
        expected_start = s.layer_end
    return stages


def _check_hex_digest(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise _malformed(f"{what} must be 64 lowercase hex characters (SHA-256)")
    return value


def normalize_digest(value: str) -> str:
    """Accept 'sha256:HEX' or HEX in any case; return lowercase HEX (64 chars) or raise."""
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    return _check_hex_digest(text, "digest")


def _check_cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise _malformed("overlay_cidr must be a string")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise _malformed("overlay_cidr must be a network such as 100.64.0.0/16 (host bits zero)") from None
    if net.version != 4 or net.prefixlen > 30:
        raise _malformed("overlay_cidr must be an IPv4 network of /30 or larger")
    return str(net)


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str) or not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", value):
        raise _malformed("created must be RFC 3339 UTC (YYYY-MM-DDTHH:MM:SSZ)")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise _malformed("created is not a valid time") from None


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_content(content: Any) -> dict:
    """Structure checks on the manifest content (no crypto). Raises ManifestError(malformed)."""
    if not isinstance(content, dict):
        raise _malformed("manifest must be a JSON object")
    missing, unknown = _CONTENT_KEYS - set(content), set(content) - _CONTENT_KEYS - _OPTIONAL_KEYS
    if missing:
        raise _malformed(f"manifest lacks {', '.join(sorted(missing))}")
    if unknown:
        raise _malformed(f"manifest has unknown fields {', '.join(sorted(unknown))}")
    if content["version"] != MANIFEST_VERSION or isinstance(content["version"], bool):
        raise _malformed(f"unsupported manifest version {content['version']!r}")
    _parse_time(content["created"])
    try:
        keys.unb64(content["owner_key"], "owner_key", length=keys.PUBLIC_KEY_LEN)
    except ValueError as exc:
        raise _malformed(str(exc)) from None
    if not isinstance(content["policy"], dict) or not content["policy"]:
        raise _malformed("policy must be a non-empty object")
    _check_hex_digest(content["model_digest"], "model_digest")
    _check_hex_digest(content["engine_digest"], "engine_digest")
    _check_stages(content["stages"], _check_owners(content["owners"]))
    _check_cidr(content["overlay_cidr"])
    if "model_source" in content:
        _check_model_source(content["model_source"])
    rdv = content["rendezvous"]
    if not isinstance(rdv, list) or not all(isinstance(r, str) and r and len(r) <= 512 for r in rdv):
        raise _malformed("rendezvous must be a list of endpoint strings")
    try:
        canonical_json(content)
    except CanonicalError as exc:
        raise _malformed(str(exc)) from None
    return content


def _check_model_source(value: Any) -> dict:
    """{"shards": where the sealed stage shards are (a path or an http(s) URL root),
    "broker": the model owner's key broker, HOST:PORT}: both non-empty strings; optionally
    "broker_key": the broker's Ed25519 public key (b64), which must sign every released stage key."""
    if not isinstance(value, dict) or not {"shards", "broker"} <= set(value) <= {"shards", "broker", "broker_key"}:
        raise _malformed("model_source must have shards and broker (and optionally broker_key)")
    for key in ("shards", "broker"):
        if not isinstance(value[key], str) or not value[key] or len(value[key]) > 2048 \
                or any(c.isspace() for c in value[key]):
            raise _malformed(f"model_source.{key} must be a non-empty string without whitespace")
    if "broker_key" in value:
        try:
            keys.load_public_key_raw(keys.unb64(value["broker_key"], "model_source.broker_key",
                                                length=keys.PUBLIC_KEY_LEN))
        except ValueError as exc:
            raise _malformed(str(exc)) from None
    return value


def owners_json(owners: Mapping[str, bytes]) -> list[dict]:
    """The manifest's owners list from name -> raw Ed25519 public key (in the given order)."""
    return [{"name": name, "key": keys.b64(bytes(key))} for name, key in owners.items()]


def build_content(*, owner_public_key: bytes, policy: Mapping[str, Any], model_digest: str,
                  engine_digest: str, owners: Mapping[str, bytes], stages: Sequence[Stage],
                  overlay_cidr: str = DEFAULT_OVERLAY_CIDR, rendezvous: Sequence[str] = (),
                  created: datetime | None = None, model_source: Mapping[str, str] | None = None) -> dict:
    """Assemble and check manifest content (unsigned). owners: node owner name -> raw Ed25519
    public key; every stage's owner must be one of them."""
    content = {
        "version": MANIFEST_VERSION,
        "created": rfc3339(created or datetime.now(timezone.utc)),
        "owner_key": keys.b64(owner_public_key),
        "policy": dict(policy),
        "model_digest": normalize_digest(model_digest),
        "engine_digest": normalize_digest(engine_digest),
        "owners": owners_json(owners),
        "stages": [s.to_json() for s in stages],
        "overlay_cidr": _check_cidr(overlay_cidr),
        "rendezvous": list(rendezvous),
    }
    if model_source is not None:
        content["model_source"] = _check_model_source(dict(model_source))
    return check_content(content)


def content_digest(content: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(canonical_json(dict(content))).digest()


def sign_content(content: Mapping[str, Any], owner_key: ed25519.Ed25519PrivateKey) -> bytes:
    """Sign content with the owner's key; the content's owner_key is set to that key's public key.

    Returns the file bytes (pretty JSON: the signature covers the canonical form, not the file).
    """
    content = dict(content)
    public = keys.public_key_bytes(owner_key)
    content["owner_key"] = keys.b64(public)
    check_content(content)
    signature = owner_key.sign(SIGNING_CONTEXT + canonical_json(content))
    doc = {"manifest": content, "signature": keys.b64(signature), "owner_key": keys.b64(public)}
    return (canonical_json(doc).decode("utf-8") + "\n").encode("utf-8")


TrustedOwner = bytes | str | ed25519.Ed25519PublicKey


def _pinned_matches(trusted: TrustedOwner, owner_public: bytes) -> bool:
    if isinstance(trusted, ed25519.Ed25519PublicKey):
        return keys.same_key(keys.public_key_bytes(trusted), owner_public)
    if isinstance(trusted, (bytes, bytearray)):
        if len(trusted) != keys.PUBLIC_KEY_LEN:
            raise ManifestError(ManifestReason.OWNER_NOT_PINNED, "trusted owner key must be 32 bytes")
        return keys.same_key(bytes(trusted), owner_public)
    if isinstance(trusted, str):
        fp = trusted.strip().lower().removeprefix("sha256:")
        if not _HEX64.match(fp):
            raise ManifestError(ManifestReason.OWNER_NOT_PINNED,
                                "trusted owner fingerprint must be 64 hex characters (SHA-256)")
        return keys.same_key(bytes.fromhex(fp), bytes.fromhex(keys.fingerprint(owner_public)))
    raise ManifestError(ManifestReason.OWNER_NOT_PINNED, "no trusted owner key or fingerprint given")


_ISSUER = object()


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose signature checked under an owner key (pinned unless `owner_pinned` is False)."""

    content: Mapping[str, Any]
    raw: bytes                 # the file bytes as read (what the head serves in its bundle)
    digest: bytes              # SHA-256 of canonical content (32 bytes; bound into REPORT_DATA)
    owner_key: bytes           # raw 32-byte Ed25519 public key
    owner_pinned: bool
    _issuer: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._issuer is not _ISSUER:
            raise TypeError("VerifiedManifest is constructed only by verification")

    @property
    def owner_fingerprint(self) -> str:
        return keys.fingerprint(self.owner_key)

    @property
    def version(self) -> int:
        return int(self.content["version"])

    @property
    def created(self) -> datetime:
        return _parse_time(self.content["created"])

    @property
    def policy_dict(self) -> dict:
        return dict(self.content["policy"])

    @cached_property
    def policy(self):  # -> conclave.runtime.attestation.policy.Policy
        """The attestation policy object, built on first use (raises PolicyError if unusable)."""
        from conclave.runtime.attestation.policy import Policy
        return Policy.from_dict(self.policy_dict)

    @property
    def model_digest(self) -> str:
        return self.content["model_digest"]

    @property
    def engine_digest(self) -> str:
        return self.content["engine_digest"]

    @cached_property
    def owners(self) -> dict[str, bytes]:
        """Node owner name -> raw Ed25519 public key (the key that signs its stage enrolments)."""
        return _check_owners(self.content["owners"])

    @cached_property
    def stages(self) -> tuple[Stage, ...]:
        return _check_stages(self.content["stages"], self.owners)

    def owner_key_for(self, node: str) -> bytes | None:
        """The public key of the owner allowed to run stage `node` (None: no such stage)."""
        stage = self.stage_for(node)
        return None if stage is None else self.owners[stage.owner]

    @property
    def head(self) -> Stage:
        return next(s for s in self.stages if s.role == "head")

    def stage_for(self, node: str) -> Stage | None:
        return next((s for s in self.stages if s.node == node), None)

    @property
    def overlay_cidr(self) -> str:
        return self.content["overlay_cidr"]

    @property
    def model_source(self) -> dict | None:
        """Where sealed stage shards come from and which broker releases their keys (None: plain)."""
        value = self.content.get("model_source")
        return dict(value) if value else None

    @property
    def broker_key(self) -> bytes | None:
        """The raw Ed25519 key that must sign every stage key the model owner's broker releases
        (model_source.broker_key); None: the manifest names none (replies are not authenticated)."""
        source = self.content.get("model_source") or {}
        return keys.unb64(source["broker_key"], "model_source.broker_key") if "broker_key" in source else None

    @property
    def rendezvous(self) -> tuple[str, ...]:
        return tuple(self.content["rendezvous"])

    def summary_json(self) -> dict:
        return {"digest": self.digest.hex(), "owner_fingerprint": self.owner_fingerprint,
                "owner_pinned": self.owner_pinned, **dict(self.content)}


@dataclass(frozen=True)
class ParsedManifest:
    content: dict
    signature: bytes
    owner_key: bytes
    raw: bytes


def parse(data: bytes) -> ParsedManifest:
    """Structure only: strict JSON, known fields, well-formed content. Raises ManifestError(malformed)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_FILE_LEN:
        raise _malformed("manifest file must be bytes of at most 1 MiB")
    try:
        doc = strict_loads(bytes(data))
    except CanonicalError as exc:
        raise _malformed(f"manifest file: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"manifest", "signature", "owner_key"}:
        raise _malformed("manifest file must have exactly manifest, signature, owner_key")
    content = check_content(doc["manifest"])
    try:
        signature = keys.unb64(doc["signature"], "signature", length=64)
        owner = keys.unb64(doc["owner_key"], "owner_key", length=keys.PUBLIC_KEY_LEN)
    except ValueError as exc:
        raise _malformed(str(exc)) from None
    if doc["owner_key"] != content["owner_key"]:
        raise _malformed("outer owner_key differs from the signed owner_key")
    return ParsedManifest(content, signature, owner, bytes(data))


def verify(parsed: ParsedManifest, *, trusted_owner: TrustedOwner | None,
           allow_unpinned: bool = False) -> VerifiedManifest:
    """Signature first, then the owner pin. `allow_unpinned` only for `manifest show/verify` display."""
    try:
        public = keys.load_public_key_raw(parsed.owner_key)
        public.verify(parsed.signature, SIGNING_CONTEXT + canonical_json(parsed.content))
    except (InvalidSignature, ValueError):
        raise ManifestError(ManifestReason.SIGNATURE_INVALID,
                            "manifest signature does not verify under its owner key") from None
    if trusted_owner is None:
        if not allow_unpinned:
            raise ManifestError(ManifestReason.OWNER_NOT_PINNED,
                                "no trusted owner key or fingerprint given")
        pinned = False
    else:
        if not _pinned_matches(trusted_owner, parsed.owner_key):
            raise ManifestError(ManifestReason.OWNER_KEY_MISMATCH,
                                "manifest is signed by a key other than the trusted owner's")
        pinned = True
    return VerifiedManifest(content=parsed.content, raw=parsed.raw,
                            digest=content_digest(parsed.content), owner_key=parsed.owner_key,
                            owner_pinned=pinned, _issuer=_ISSUER)


def verify_bytes(data: bytes, *, trusted_owner: TrustedOwner | None,
                 allow_unpinned: bool = False) -> VerifiedManifest:
    return verify(parse(data), trusted_owner=trusted_owner, allow_unpinned=allow_unpinned)


class DeploymentManifest:
    """Entry points: load/verify a signed file; sign content."""

    parse = staticmethod(parse)
    verify = staticmethod(verify)
    verify_bytes = staticmethod(verify_bytes)
    build_content = staticmethod(build_content)
    sign_content = staticmethod(sign_content)

    @staticmethod
    def load(path: Path | str, *, trusted_owner: TrustedOwner) -> VerifiedManifest:
        """Read and verify a manifest file against the pinned owner key or fingerprint."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _malformed(f"cannot read manifest {path}: {exc.strerror}") from None
        return verify_bytes(data, trusted_owner=trusted_owner)
