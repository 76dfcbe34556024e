"""Mutation fuzzing of the admission gRPC handlers, in process and over a real gRPC channel.

    .venv/bin/python -m tests.reliability.admission_fuzzer [--count 100000] [--wire 2000] [--budget 1200]
                                                            [--hang 2.0] [--seed 1] [--json]

(from the checkout's root). test_admission_fuzz.py runs a bounded slice of the same fuzzer in CI.

Two real node agents (a head with the secrets broker, a worker) join on 127.0.0.1 with
simulated evidence and fake WireGuard devices, exactly as tests/overlay/test_agent_inprocess.py
does. Then every handler that takes a wire message from a stranger is fed valid requests that
were mutated, either as serialized protobuf bytes (flips, truncation, splices; reusing
tests/attestation/fuzz_support.mutate) or field by field (boundary lengths, other nodes' keys,
odd secret names, random values):

  attest       NodeService.Attest           (the challenge: a nonce in, bound evidence out)
  admit        Verifier.admit                (the verifier side: a peer's AttestReply in)
  release_key  NodeService.ReleaseKey        (PSK release, HPKE-sealed)
  confirm_key  NodeService.ConfirmKey        (PSK confirmation HMAC)
  get_secret   NodeService.GetSecret         (secrets broker)
  announce     RendezvousService.Announce    (untrusted relay)
  ping         NodeService.Ping              (liveness probe: answers anyone, changes nothing)

Outcomes that are by design: a reply with a Status enum value and a known reason, an abort with
the status code the handler documents (INVALID_ARGUMENT, RESOURCE_EXHAUSTED), an
AdmissionRejected from admit, or a DecodeError (gRPC answers INTERNAL before the handler runs).
A crash is anything else; a hang is a call longer than --hang seconds (SIGALRM watchdog). The
fuzzer also checks two security oracles: nothing sealed is ever returned to a requester other
than the admitted worker, admit never accepts an input that differs from the valid reply, and a
Ping reply only ever carries the responder's own WireGuard key, echoes the request's token, and
says `meshed` only to the peer it really meshed with. Then --wire raw mutated messages go through a real channel to the real servers (a crash there is
UNKNOWN, the code of an unhandled handler exception), and the servers must still answer a valid
challenge and keep the mesh. Expected: 0 crashes, 0 hangs, 0 oracle violations; exit 1 otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError

from conclave.overlay import keyrelease, rpc
from conclave.overlay.admission import AdmissionRejected
from conclave.overlay.device import FakeDevice
from conclave.overlay.evidence import SimEvidenceSource
from conclave.overlay.keys import WgPrivateKey
from conclave.overlay.liveness import PROOF_LEN, TOKEN_LEN, new_token, ping_proof
from conclave.overlay.nonces import NonceCache
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.reasons import OverlayReason
from conclave.overlay.rendezvous import RendezvousService, signed_announcement
from conclave.runtime.agent.agent import NodeAgent
from conclave.runtime.agent.config import NodeConfig, Timing
from conclave.runtime.agent.service import NodeService
from conclave.runtime.attestation.core import Reason
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.keys.broker import open_secret
from conclave.runtime.keys.secret import SecretValue

from tests.attestation.fuzz_support import mutate  # the checkout root is on sys.path (python -m, conftest)

GOOD = bytes.fromhex("ab" * 48)
POLICY = {"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
          "sim": {"measurement": [GOOD.hex()]}}
TARGETS = ("attest", "admit", "release_key", "confirm_key", "get_secret", "announce", "ping")
# share of --count per target: admission (verifier side) is the richest parser, so it gets most
WEIGHTS = {"attest": 0.13, "admit": 0.22, "release_key": 0.13, "confirm_key": 0.13, "get_secret": 0.13,
           "announce": 0.13, "ping": 0.13}
ALLOWED_ABORTS = {"attest": {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED},
                  "announce": {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED},
                  "ping": {grpc.StatusCode.INVALID_ARGUMENT}}
KNOWN_REASONS = ({str(r) for r in OverlayReason} | {str(r) for r in Reason}
                 | {"", "wrong_leader", "unknown_secret", "role_not_allowed"})
WIRE_METHODS = {"attest": ("/conclave.v1.Node/Attest", pb.AttestReply),
                "release_key": ("/conclave.v1.Node/ReleaseKey", pb.KeyReleaseReply),
                "confirm_key": ("/conclave.v1.Node/ConfirmKey", pb.KeyConfirmReply),
                "get_secret": ("/conclave.v1.Node/GetSecret", pb.SecretReply),
                "announce": ("/conclave.v1.Rendezvous/Announce", pb.AnnounceReply),
                "ping": ("/conclave.v1.Node/Ping", pb.PingReply)}
SECRET_NAMES = ("ray_token", "model_key", "nope", "", "../etc/passwd", "RAY_TOKEN", "ray_token\x00", "a" * 64,
                "a" * 65, "ray token", "ray_token\n", "é", "-x", ".", "x" * 10_000)


class Aborted(Exception):
    """What grpc's ServicerContext.abort raises: the RPC ends with `code`."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code


class FakeContext:
    """The seam a servicer sees: only abort() is used by the handlers under test."""

    def abort(self, code: grpc.StatusCode, details: str):
        raise Aborted(code, details)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


class Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise Hang()


class Crash(AssertionError):
    """An outcome the handler is not designed to produce (or a broken security oracle)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Mesh:
    """A head and a worker admitted to each other on loopback; `leader` holds the pair's PSK role."""
    head: NodeAgent
    worker: NodeAgent
    root: SimulatedRoot
    rdv_port: int
    tmp: tempfile.TemporaryDirectory
    leader: NodeAgent = field(init=False)
    follower: NodeAgent = field(init=False)

    def __post_init__(self) -> None:
        if keyrelease.is_leader(self.head.identity.wg_public, self.worker.identity.wg_public):
            self.leader, self.follower = self.head, self.worker
        else:
            self.leader, self.follower = self.worker, self.head

    def meshed(self) -> bool:
        return all(len(a.status()["device_peers"]) == 1 and a.status()["state"] == "meshed"
                   for a in (self.head, self.worker))

    def stop(self) -> None:
        for a in (self.worker, self.head):
            a.stop()
        self.tmp.cleanup()


def start_mesh(timeout: float = 30.0) -> Mesh:
    tmp = tempfile.TemporaryDirectory(prefix="conclave-fuzz-")
    root = SimulatedRoot.generate()
    rdv = free_port()
    made: list[NodeAgent] = []
    try:
        for i, role in enumerate(("head", "worker")):
            name = f"fz-n{i}"
            cfg = NodeConfig(
                node_name=name, role=role, owner="fuzz", policy=Policy.from_dict(POLICY),
                manifest_digest=b"\x11" * 32,
                evidence_source=SimEvidenceSource(root.issue_attester(name, measurement=GOOD)),
                underlay_host="127.0.0.1", admission_port=free_port(), wireguard_port=51870 + i,
                rendezvous=[f"127.0.0.1:{rdv}"], serve_rendezvous_port=rdv if i == 0 else None,
                trusted_sim_roots=[root.certificate], status_socket=Path(tmp.name) / f"{name}.sock",
                secrets={"ray_token": SecretValue(b"r" * 32), "model_key": SecretValue(b"m" * 32)} if i == 0 else {},
                allowed_roles={"ray_token": frozenset({"head", "worker"}), "model_key": frozenset({"head"})},
                want_secrets=["ray_token"] if role == "worker" else [],
                device_factory=lambda cfg, ident, addr: FakeDevice(cfg.interface, cfg.wireguard_port),
                timing=Timing(tick=0.05, reconcile_interval=0.3, announce_interval=0.2, retry_interval=0.5,
                              reattest_interval=3600))
            agent = NodeAgent(cfg)
            agent.start()
            made.append(agent)
        mesh = Mesh(made[0], made[1], root, rdv, tmp)
        deadline = time.monotonic() + timeout
        while not (mesh.meshed() and "ray_token" in mesh.worker.received_secrets):
            if time.monotonic() > deadline:
                raise RuntimeError("the two fuzz agents did not mesh")
            time.sleep(0.05)
        return mesh
    except BaseException:
        for a in made:
            a.stop()
        tmp.cleanup()
        raise


# ---------------------------------------------------------------------------- mutation
def _blob(rng: random.Random, valid: bytes) -> bytes:
    """A field value: the valid one, mutated, a boundary length, or random."""
    choice = rng.randrange(7)
    if choice == 0:
        return valid
    if choice == 1:
        return mutate(valid, rng) if valid else bytes([rng.randrange(256)])
    if choice == 2:
        return bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 31, 32, 33, 64))))
    if choice == 3:
        return b"\x00" * rng.choice((0, 32, 1216, 1217, 4096))
    if choice == 4:
        return valid[:-1] if valid else b""
    if choice == 5:
        return valid + b"\x00"
    return rng.randbytes(rng.randrange(0, 2048))


def _text(rng: random.Random, valid: str) -> str:
    choice = rng.randrange(6)
    if choice == 0:
        return valid
    if choice == 1:
        return mutate(valid.encode(), rng).decode("utf-8", "replace")
    if choice == 2:
        return rng.choice(("", " ", "\x00", "é" * 70, "a" * 300, "../../x", "1.2.3.4\n", "::1", "%s%n"))
    if choice == 3:
        return valid + rng.choice(("\x00", "\n", " ", "é"))
    if choice == 4:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(0, 80)))
    return valid[: rng.randrange(len(valid) + 1)]


def _mutate_announcement(rng: random.Random, ann: pb.NodeAnnouncement, keys: list[bytes]) -> None:
    for fld in rng.sample(list(ann.DESCRIPTOR.fields_by_name), rng.randint(1, 3)):
        value = getattr(ann, fld)
        if isinstance(value, bytes):
            setattr(ann, fld, rng.choice(keys) if rng.random() < 0.3 else _blob(rng, value))
        elif isinstance(value, str):
            setattr(ann, fld, _text(rng, value))
        else:
            setattr(ann, fld, rng.choice((0, 1, 65535, 65536, 2**32 - 1, rng.randrange(2**32))))


def mutate_message(rng: random.Random, msg, *, keys: list[bytes]):
    """Field-level mutation of a copy of `msg` (any request or reply of the schema)."""
    out = type(msg)()
    out.CopyFrom(msg)
    fields = list(out.DESCRIPTOR.fields_by_name)
    for fld in rng.sample(fields, rng.randint(1, len(fields))):
        value = getattr(out, fld)
        if fld == "identity":
            _mutate_announcement(rng, out.identity, keys)
        elif fld == "announcement":
            _mutate_announcement(rng, out.announcement, keys)
        elif fld == "evidence":
            items = list(out.evidence)
            op = rng.randrange(6)
            if op == 0 or not items:
                out.ClearField("evidence")
                for _ in range(rng.choice((0, 2, 9, 10))):
                    out.evidence.add().CopyFrom(msg.evidence[0])
            elif op == 1:
                item = out.evidence[rng.randrange(len(items))]
                item.tee = rng.choice(("tdx", "snp", "nvgpu", "sim", "", "SIM", "sgx", _text(rng, item.tee)))
            elif op == 2:
                item = out.evidence[rng.randrange(len(items))]
                item.data = mutate(item.data, rng) if rng.random() < 0.8 else _blob(rng, item.data)
            elif op == 3:
                item = out.evidence[rng.randrange(len(items))]
                for _ in range(rng.choice((1, 2, 17))):
                    item.certs.append(_blob(rng, b"\x30\x82\x01\x00" + rng.randbytes(32)))
            elif op == 4:
                out.evidence[rng.randrange(len(items))].collateral = _blob(rng, b'{"tcb_info": {}}')
            else:
                out.evidence.add().CopyFrom(out.evidence[0])
                out.evidence[-1].tee = "nvgpu"
        elif fld == "name":
            out.name = rng.choice(SECRET_NAMES) if rng.random() < 0.6 else _text(rng, value)
        elif isinstance(value, bytes):
            out.__setattr__(fld, rng.choice(keys) if rng.random() < 0.4 else _blob(rng, value))
        elif isinstance(value, str):
            out.__setattr__(fld, _text(rng, value))
    return out


def mutated_bytes(rng: random.Random, msg, *, keys: list[bytes]) -> bytes:
    """The wire form of a mutated request: byte-level, field-level, both, or random bytes."""
    mode = rng.randrange(10)
    if mode < 3:
        return mutate(msg.SerializeToString(), rng)
    if mode < 8:
        return mutate_message(rng, msg, keys=keys).SerializeToString()
    if mode < 9:
        return mutate(mutate_message(rng, msg, keys=keys).SerializeToString(), rng, max_ops=2)
    return rng.randbytes(rng.randrange(0, 512))


# ---------------------------------------------------------------------------- targets
class AdmissionFuzzer:
    """Builds a valid request per target, mutates it, calls the handler, judges the outcome."""

    def __init__(self, mesh: Mesh, rng: random.Random):
        self.mesh = mesh
        self.rng = rng
        self.ctx = FakeContext()
        # rate limits are exercised separately: the fuzz must reach the handler behind them
        self.head_svc = NodeService(mesh.head, attest_rate=1e9, attest_burst=10**9)
        self.leader_svc = NodeService(mesh.leader, attest_rate=1e9, attest_burst=10**9)
        self.rdv_clock = [0.0]
        self.rdv = RendezvousService(ttl=60, clock=lambda: self.rdv_clock[0])
        self.nonces = NonceCache(ttl=3600)
        self.keys = [mesh.head.identity.wg_public.raw, mesh.worker.identity.wg_public.raw,
                     WgPrivateKey.generate().public_key().raw, b"\x00" * 32, b"\xff" * 32]
        self.admitted_worker = mesh.worker.identity.wg_public.raw
        self._replies: list[tuple[bytes, bytes]] = []

    # valid requests ----------------------------------------------------------
    def valid(self, target: str):
        m, rng = self.mesh, self.rng
        if target == "attest":
            return pb.AttestRequest(nonce=rng.randbytes(32), verifier_wg_public_key=m.worker.identity.wg_public.raw)
        if target == "release_key":
            return pb.KeyReleaseRequest(requester_wg_public_key=m.follower.identity.wg_public.raw,
                                        leader_wg_public_key=m.leader.identity.wg_public.raw)
        if target == "confirm_key":
            proof = rng.randbytes(32)
            if rng.random() < 0.3:  # a genuine proof: the follower opens the PSK the leader seals
                status, sealed, _ = m.leader.handle_release_key(m.follower.identity.wg_public,
                                                                m.leader.identity.wg_public)
                if status == pb.OK:
                    psk = m.follower.identity.hpke_private.open(
                        sealed, info=keyrelease.psk_info(m.leader.identity.wg_public, m.follower.identity.wg_public))
                    from conclave.overlay.keys import PresharedKey
                    proof = keyrelease.confirmation(PresharedKey(psk), m.leader.identity.wg_public,
                                                    m.follower.identity.wg_public)
            return pb.KeyConfirmRequest(requester_wg_public_key=m.follower.identity.wg_public.raw,
                                        leader_wg_public_key=m.leader.identity.wg_public.raw, confirmation=proof)
        if target == "get_secret":
            return pb.SecretRequest(requester_wg_public_key=m.worker.identity.wg_public.raw,
                                    name=rng.choice(("ray_token", "model_key")))
        if target == "announce":
            # the relay keys entries by statement key and takes only signed announcements: a fresh
            # key per request, signed as an agent signs its own
            signer = ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
            ann = dataclasses.replace(m.worker.me, node_id=f"fz-{rng.randrange(10**6)}",
                                      statement_key=signer.public_key().public_bytes_raw())
            return signed_announcement(ann, 1, signer)
        if target == "admit":
            nonce = self.nonces.issue(m.worker.me.node_id)
            return m.worker.handle_attest(nonce)
        if target == "ping":
            token = new_token()   # the worker's real probe: proves the pair's PSK as the head holds it
            with m.head._lock:    # (fuzzed ConfirmKey calls may have re-keyed the head's side only)
                psk = m.head._admitted_by_key(m.worker.identity.wg_public).psk
            # mid re-key (a fuzzed ReleaseKey/ConfirmKey) the head holds no PSK: the worker's probe then
            # carries no proof, as the agent's own pings do without a pairing
            proof = b"" if psk is None else ping_proof(psk.secret_bytes(), token, m.worker.identity.wg_public,
                                                        m.head.identity.wg_public)
            return pb.PingRequest(verifier_wg_public_key=m.worker.identity.wg_public.raw, token=token, proof=proof)
        raise ValueError(target)

    # one case ----------------------------------------------------------------
    def run_case(self, target: str, data: bytes | None = None, *, mutated: bool = True) -> str:
        """Feed one input; return the outcome label. Raises Crash (or anything unexpected)."""
        valid = self.valid(target)
        if data is None:
            data = mutated_bytes(self.rng, valid, keys=self.keys) if mutated else valid.SerializeToString()
        request_type = type(valid)
        try:
            request = request_type.FromString(data)
        except DecodeError:
            if target == "admit":
                self.nonces.retire(valid.nonce)
            return "decode_error"
        try:
            return getattr(self, f"_call_{target}")(request, valid)
        finally:
            if target == "admit":
                self.nonces.retire(valid.nonce)

    def _call_attest(self, req: pb.AttestRequest, valid) -> str:
        try:
            reply = self.head_svc.Attest(req, self.ctx)
        except Aborted as exc:
            return self._aborted("attest", exc)
        if not isinstance(reply, pb.AttestReply) or reply.nonce != req.nonce or len(reply.evidence) != 1:
            raise Crash(f"Attest answered {type(reply).__name__} not bound to the request nonce")
        return "ok"

    def _call_admit(self, reply: pb.AttestReply, valid: pb.AttestReply) -> str:
        verifier = self.mesh.head.verifier
        try:
            verifier.admit(challenged=self.mesh.worker.me, reply=reply, nonces=self.nonces)
        except AdmissionRejected as exc:
            if str(exc.reason) not in KNOWN_REASONS:
                raise Crash(f"admit rejected with an unknown reason {exc.reason!r}") from None
            return f"rejected:{exc.reason}"
        if not _equivalent_reply(reply, valid):
            raise Crash("admit accepted a reply that differs from the prover's valid reply")
        return "admitted"

    def _judge_status(self, target: str, reply, status: int, reason: str, sealed: bytes | None,
                      requester: bytes) -> str:
        if status not in pb.Status.values() or status == pb.STATUS_UNSPECIFIED:
            raise Crash(f"{target} answered status {status}")
        if reason not in KNOWN_REASONS:
            raise Crash(f"{target} answered an unknown reason {reason!r}")
        if sealed is not None:
            if status != pb.OK and sealed:
                raise Crash(f"{target} returned sealed bytes with status {pb.Status.Name(status)}")
            if status == pb.OK and requester != self.admitted_worker \
                    and requester != self.mesh.follower.identity.wg_public.raw:
                raise Crash(f"{target} released a sealed secret to a requester that is not admitted")
        return f"{pb.Status.Name(status).lower()}" + (f":{reason}" if reason else "")

    def _call_release_key(self, req, valid) -> str:
        reply = self.leader_svc.ReleaseKey(req, self.ctx)
        return self._judge_status("release_key", reply, reply.status, reply.reason, reply.sealed_psk,
                                  req.requester_wg_public_key)

    def _call_confirm_key(self, req, valid) -> str:
        reply = self.leader_svc.ConfirmKey(req, self.ctx)
        if reply.status == pb.OK and req.requester_wg_public_key != self.mesh.follower.identity.wg_public.raw:
            raise Crash("ConfirmKey accepted a requester that is not the admitted follower")
        return self._judge_status("confirm_key", reply, reply.status, reply.reason, None, req.requester_wg_public_key)

    def _call_get_secret(self, req, valid) -> str:
        reply = self.head_svc.GetSecret(req, self.ctx)
        label = self._judge_status("get_secret", reply, reply.status, reply.reason, reply.sealed_secret,
                                   req.requester_wg_public_key)
        if reply.status == pb.OK:
            # only ray_token is allowed to workers; it must open for the worker and be the real value
            if req.name != "ray_token":
                raise Crash(f"GetSecret released {req.name!r} to a worker")
            value = open_secret(self.mesh.worker.identity.hpke_private, reply.sealed_secret, name=req.name,
                                broker_wg=self.mesh.head.identity.wg_public.raw, requester_wg=req.requester_wg_public_key)
            if value != SecretValue(b"r" * 32):
                raise Crash("GetSecret released a wrong value")
        return label

    def _call_announce(self, req, valid) -> str:
        self.rdv_clock[0] += 1.0
        try:
            reply = self.rdv.Announce(req, self.ctx)
        except Aborted as exc:
            return self._aborted("announce", exc)
        if not isinstance(reply, pb.AnnounceReply):
            raise Crash("Announce answered the wrong type")
        return "ok"

    def _call_ping(self, req: pb.PingRequest, valid) -> str:
        try:
            reply = self.head_svc.Ping(req, self.ctx)
        except Aborted as exc:
            # INVALID_ARGUMENT is the designed answer to a malformed probe, and only to one
            if _well_formed_ping(req):
                raise Crash(f"Ping aborted a well-formed request with {exc.code.name}") from None
            return self._aborted("ping", exc)
        if not _well_formed_ping(req):
            raise Crash("Ping answered a malformed request instead of INVALID_ARGUMENT")
        return self.judge_ping_reply(req, reply)

    def judge_ping_reply(self, req: pb.PingRequest, reply) -> str:
        """The Ping oracle: the head's own key, the request's token, `meshed` only for its real peer."""
        if not isinstance(reply, pb.PingReply):
            raise Crash(f"Ping answered {type(reply).__name__}")
        if reply.wg_public_key != self.mesh.head.identity.wg_public.raw:
            raise Crash("Ping answered with a WireGuard key that is not the responder's own")
        if reply.token != req.token:
            raise Crash("Ping did not echo the request's token")
        if reply.meshed and req.verifier_wg_public_key != self.admitted_worker:
            raise Crash("Ping said meshed to a caller the responder never meshed with")
        if reply.meshed and len(req.proof) != PROOF_LEN:
            raise Crash("Ping said meshed to a caller that did not prove the pair's PSK")
        return "ok:meshed" if reply.meshed else "ok"

    @staticmethod
    def _aborted(target: str, exc: Aborted) -> str:
        if exc.code not in ALLOWED_ABORTS[target]:
            raise Crash(f"{target} aborted with {exc.code.name}")
        return f"abort:{exc.code.name}"


def _well_formed_ping(req: pb.PingRequest) -> bool:
    return (len(req.verifier_wg_public_key) == 32 and len(req.token) == TOKEN_LEN
            and len(req.proof) in (0, PROOF_LEN))


def _equivalent_reply(a: pb.AttestReply, b: pb.AttestReply) -> bool:
    """Same in everything admission believes: the bound identity fields, the nonce, and each
    evidence item's TEE and bytes. Endpoints, the owner label, extra certificates or collateral
    the verifier does not need may differ (they are not bound, by design: see same_identity)."""
    def bound(r: pb.AttestReply):
        i = r.identity
        return (i.node_id, i.role, i.wg_public_key, i.hpke_public_key, i.overlay_address, r.nonce,
                [(e.tee, e.data) for e in r.evidence])
    return bound(a) == bound(b)


# ---------------------------------------------------------------------------- driver
def fuzz_in_process(fuzzer: AdmissionFuzzer, *, count: int, budget: float, hang: float) -> dict:
    stats: dict[str, Counter] = {t: Counter() for t in TARGETS}
    crashes: list[dict] = []
    slowest = {t: 0.0 for t in TARGETS}
    per_target = {t: max(1, int(count * WEIGHTS[t])) for t in TARGETS}
    per_target["admit"] += count - sum(per_target.values())
    start = time.monotonic()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for target in TARGETS:
            t_budget = budget * WEIGHTS[target]
            t_start = time.monotonic()
            for _ in range(per_target[target]):
                if time.monotonic() - t_start > t_budget:
                    stats[target]["stopped_by_budget"] += 1
                    break
                t0 = time.perf_counter()
                signal.setitimer(signal.ITIMER_REAL, hang)
                try:
                    outcome = fuzzer.run_case(target)
                    stats[target][outcome] += 1
                except Hang:
                    stats[target]["hangs"] += 1
                    crashes.append({"target": target, "kind": "hang"})
                except Exception as exc:  # noqa: BLE001 - this is what we hunt
                    stats[target]["crashes"] += 1
                    crashes.append({"target": target, "kind": type(exc).__name__, "message": str(exc)[:300],
                                    "trace": traceback.format_exc(limit=6)})
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                stats[target]["inputs"] += 1
                slowest[target] = max(slowest[target], time.perf_counter() - t0)
    finally:
        signal.signal(signal.SIGALRM, old)
    return {"inputs": sum(s["inputs"] for s in stats.values()),
            "crashes": sum(s["crashes"] for s in stats.values()),
            "hangs": sum(s["hangs"] for s in stats.values()),
            "seconds": round(time.monotonic() - start, 1),
            "slowest_s": {t: round(v, 4) for t, v in slowest.items()},
            "per_target": {t: dict(s) for t, s in stats.items()}, "failures": crashes[:20]}


def wire_call(channel: grpc.Channel, method: str, data: bytes, timeout: float = 5.0) -> tuple[str, bytes | None]:
    """Send raw request bytes; return (status code name, raw reply bytes or None)."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        return "OK", call(data, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code().name, None


# codes a server may answer to garbage by design; UNKNOWN means a handler raised
WIRE_ALLOWED = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INTERNAL"}


def fuzz_wire(fuzzer: AdmissionFuzzer, *, count: int) -> dict:
    mesh = fuzzer.mesh
    head_ch = rpc.channel(f"127.0.0.1:{mesh.head.cfg.admission_port}")
    leader_ch = rpc.channel(f"127.0.0.1:{mesh.leader.cfg.admission_port}")
    rdv_ch = rpc.channel(f"127.0.0.1:{mesh.rdv_port}")
    codes: Counter = Counter()
    failures: list[dict] = []
    start = time.monotonic()
    try:
        targets = list(WIRE_METHODS)
        for i in range(count):
            target = targets[i % len(targets)]
            method, reply_type = WIRE_METHODS[target]
            ch = {"release_key": leader_ch, "confirm_key": leader_ch, "announce": rdv_ch}.get(target, head_ch)
            data = mutated_bytes(fuzzer.rng, fuzzer.valid(target), keys=fuzzer.keys)
            code, raw = wire_call(ch, method, data)
            codes[f"{target}:{code}"] += 1
            if code == "OK":
                try:
                    reply = reply_type.FromString(raw)
                    if target == "ping":  # the same oracle as in process, on what really crossed the wire
                        fuzzer.judge_ping_reply(pb.PingRequest.FromString(data), reply)
                except DecodeError:
                    code = "BAD_REPLY"
                except Crash as exc:
                    code = f"ORACLE: {exc}"
            elif code == "INVALID_ARGUMENT" and target == "ping" and _well_formed_ping(pb.PingRequest.FromString(data)):
                code = "ORACLE: Ping refused a well-formed probe"
            if code not in WIRE_ALLOWED:
                failures.append({"target": target, "code": code, "input_hex": data[:512].hex()})
        healthy = still_serving(mesh)
    finally:
        for ch in (head_ch, leader_ch, rdv_ch):
            ch.close()
    return {"inputs": count, "crashes": len(failures), "codes": dict(sorted(codes.items())),
            "seconds": round(time.monotonic() - start, 1), "serving_after": healthy, "failures": failures[:20]}


def still_serving(mesh: Mesh) -> bool:
    """A valid challenge is answered by both agents and the pair is still meshed."""
    from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
    ok = True
    for agent in (mesh.head, mesh.worker):
        ch = rpc.channel(f"127.0.0.1:{agent.cfg.admission_port}")
        try:
            nonce = random.randbytes(32)
            for _ in range(20):  # the real service rations challenges; wait out the bucket if a burst emptied it
                try:
                    reply = pb_grpc.NodeStub(ch).Attest(pb.AttestRequest(nonce=nonce), timeout=5)
                    ok &= reply.nonce == nonce and len(reply.evidence) == 1
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        return False
                    time.sleep(0.2)
            else:
                return False
        finally:
            ch.close()
    return ok and mesh.meshed()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000, help="in-process inputs (default 100000)")
    ap.add_argument("--wire", type=int, default=2000, help="inputs over a real gRPC channel (default 2000)")
    ap.add_argument("--budget", type=float, default=1200.0, help="seconds for the in-process part")
    ap.add_argument("--hang", type=float, default=2.0, help="per-call hang limit in seconds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    random.seed(args.seed)
    logging.getLogger("conclave").setLevel(logging.ERROR)  # rejections are the expected outcome: keep quiet
    mesh = start_mesh()
    try:
        fuzzer = AdmissionFuzzer(mesh, rng)
        result = {"seed": args.seed, "hang_limit_s": args.hang,
                  "in_process": fuzz_in_process(fuzzer, count=args.count, budget=args.budget, hang=args.hang)}
        result["wire"] = fuzz_wire(fuzzer, count=args.wire)
    finally:
        mesh.stop()
    ip, wire = result["in_process"], result["wire"]
    result["total_inputs"] = ip["inputs"] + wire["inputs"]
    result["ok"] = ip["crashes"] == 0 and ip["hangs"] == 0 and wire["crashes"] == 0 and wire["serving_after"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"in-process: {ip['inputs']} inputs in {ip['seconds']} s: {ip['crashes']} crashes, {ip['hangs']} hangs")
        for t, s in ip["per_target"].items():
            print(f"  {t:12s} {json.dumps(s, sort_keys=True)}  slowest {ip['slowest_s'][t]} s")
        print(f"wire: {wire['inputs']} inputs in {wire['seconds']} s: {wire['crashes']} crashes; "
              f"serving afterwards: {wire['serving_after']}")
        print(f"  codes {json.dumps(wire['codes'])}")
        for f in ip["failures"] + wire["failures"]:
            print("FAILURE", json.dumps(f)[:2000])
        print(f"total inputs {result['total_inputs']}: {'OK' if result['ok'] else 'FAILED'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
