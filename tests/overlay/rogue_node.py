"""A misbehaving `conclave node` for overlay tests: the real agent with a dishonest prover.

Usage: rogue_node.py MODE node ...   (same arguments as `conclave node`)
Every mode but own_policy skips the agent's own start-up self-check (an honest node with debug
or a wrong measurement refuses to start; a rogue would not), then:
  own_policy=FILE  boots from the real signed manifest (its digest is bound into the evidence) but
             validates evidence, its own included, against the policy in FILE instead of the
             manifest's: a host that pins its own (wrong) measurement passes its self-check and
             really tries to join, and it refuses the honest nodes by that policy
  unchecked  behaves honestly otherwise (debug guest, wrong measurement)
  wrong_key  answers challenges with genuine evidence bound to a WireGuard key it does not present
  replay     refuses the first challenge of each verifier, then forever answers with the evidence
             made for that first nonce (a replayed nonce)
Everything else (announcing, its own device, asking for secrets, presenting the enrolment its
owner handed over for its real keys) is the honest code path.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import grpc

from conclave.overlay import prover, wire
from conclave.overlay.identity import Announcement
from conclave.overlay.keys import WgPrivateKey
from conclave.runtime.agent import agent as agent_mod
from conclave.runtime.cli import main


class _Abort(Exception):
    pass


def install(mode: str) -> None:
    if mode.startswith("own_policy="):
        _own_policy(Path(mode.partition("=")[2]))
        return
    agent_mod.NodeAgent.self_attest = lambda self: None
    if mode == "unchecked":
        return
    original = agent_mod.NodeAgent.handle_attest
    first_nonce: dict[bytes, bytes] = {}
    lock = threading.Lock()

    def wrong_key(self, nonce: bytes):
        other = WgPrivateKey.generate().public_key()
        fake = Announcement(**{**self.me.__dict__, "wg_public_key": other})
        reply = prover.answer_challenge(me=fake, source=self.cfg.evidence_source,
                                           manifest_digest=self.cfg.manifest_digest, nonce=nonce,
                                           enrolment=self.enrolment)   # the enrolment of our real keys
        reply.identity.CopyFrom(wire.announcement_to_proto(self.me))   # present our real key, evidence binds another
        return reply

    def replay(self, nonce: bytes, verifier: bytes = b""):
        with lock:
            old = first_nonce.get(verifier)
            if old is None:
                first_nonce[verifier] = nonce
                raise _Abort()
        return original(self, old)

    agent_mod.NodeAgent.handle_attest = {"wrong_key": wrong_key, "replay": replay}[mode]

    # the service passes only the nonce; wrap it to tell verifiers apart for the replay mode
    from conclave.runtime.agent import service

    def attest(self, request, context):
        try:
            if mode == "replay":
                return self.agent.handle_attest(bytes(request.nonce), bytes(request.verifier_wg_public_key))
            return self.agent.handle_attest(bytes(request.nonce))
        except _Abort:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    service.NodeService.Attest = attest


def _own_policy(path: Path) -> None:
    from conclave.runtime.attestation.policy import Policy
    from conclave.runtime.cli import node as node_cli
    policy = Policy.load(path)
    signed_config = node_cli.build_config

    def build_config(args, bundle=None):
        cfg = signed_config(args, bundle)   # the signed manifest is checked and its digest kept
        cfg.policy = policy
        return cfg

    node_cli.build_config = build_config


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
