"""Secrets broker: releases named secrets, HPKE-sealed, to admitted nodes whose role may have them.

The caller (the node service) looks the requester up among the peers this node admitted; the
broker then applies the per-secret role map and seals to the requester's attested HPKE key,
with a context that names the secret and both nodes, so a sealed blob is useless elsewhere.

Per-stage model keys: a secret named `model_key/<stage name>` (stage_key_name) is stage-bound.
Besides the role check (the roles of MODEL_KEY), it is released only to the requester whose
admitted node id IS that stage; any other node, or a caller that does not say who asks, is
refused with `stage_not_allowed`. So no node ever receives another stage's shard key.

Sender authentication: the releasing party signs each sealed secret (sign_secret: a node with
its evidence-bound statement key, the model owner's broker with the key the manifest names), and
the receiver opens only what verifies under the key it trusts for that sender (open_signed_secret),
since anyone could seal a value to a node's public HPKE key.
"""
from __future__ import annotations

from typing import Mapping

from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.keys.hpke import HpkePrivateKey, HpkePublicKey, context_info, seal
from conclave.runtime.keys.secret import SecretValue
from conclave.runtime.keys.sender_auth import sign_release, verify_release

SECRET_PURPOSE = "conclave/secret/v1"
RAY_TOKEN = "ray_token"
MODEL_KEY = "model_key"
STAGE_KEY_PREFIX = MODEL_KEY + "/"
STAGE_NOT_ALLOWED = "stage_not_allowed"   # = overlay.reasons.OverlayReason.STAGE_NOT_ALLOWED
DEFAULT_ALLOWED_ROLES: dict[str, frozenset[str]] = {
    RAY_TOKEN: frozenset({"head", "worker"}),
    MODEL_KEY: frozenset({"head", "worker"}),
}


class SecretRefused(ConclaveError):
    exit_code = ExitCode.POLICY_VIOLATED

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)


def stage_key_name(stage_name: str) -> str:
    """The broker's name for the shard key of the stage called `stage_name` in the manifest."""
    if not isinstance(stage_name, str) or not stage_name or "/" in stage_name:
        raise ValueError("a stage name is a non-empty string without '/'")
    return STAGE_KEY_PREFIX + stage_name


def secret_purpose(name: str) -> str:
    """The purpose of a secret name (`model_key` for every `model_key/<stage>`): for metric labels."""
    return MODEL_KEY if name.startswith(STAGE_KEY_PREFIX) else name


def secret_info(name: str, broker_wg: bytes, requester_wg: bytes) -> bytes:
    return context_info(SECRET_PURPOSE, name.encode(), broker_wg, requester_wg)


class SecretsBroker:
    def __init__(self, secrets: Mapping[str, SecretValue],
                 allowed_roles: Mapping[str, frozenset[str]] | None = None):
        self._secrets = dict(secrets)
        self.allowed_roles = {k: frozenset(v) for k, v in (allowed_roles or DEFAULT_ALLOWED_ROLES).items()}

    def names(self) -> list[str]:
        return sorted(self._secrets)

    def fingerprints(self) -> dict[str, str]:
        return {k: v.fingerprint() for k, v in sorted(self._secrets.items())}

    def _roles_for(self, name: str) -> frozenset[str]:
        if name in self.allowed_roles:
            return self.allowed_roles[name]
        if name.startswith(STAGE_KEY_PREFIX):   # per-stage keys take the roles of the model key
            return self.allowed_roles.get(MODEL_KEY, frozenset())
        return frozenset()

    def release(self, name: str, *, requester_role: str, requester_hpke: HpkePublicKey,
                requester_wg: bytes, broker_wg: bytes, requester_node_id: str | None = None) -> bytes:
        """Sealed secret for an ADMITTED requester (the caller checked admission).

        requester_node_id: the node id the requester was admitted as; required for a per-stage
        key (`model_key/<stage>`), which only that stage receives. Other secrets ignore it.
        """
        value = self._secrets.get(name)
        if value is None:
            raise SecretRefused("unknown_secret", f"no secret named {name!r} here")
        if requester_role not in self._roles_for(name):
            raise SecretRefused("role_not_allowed", f"role {requester_role} may not receive {name!r}")
        if name.startswith(STAGE_KEY_PREFIX) and (not requester_node_id
                                                  or requester_node_id != name[len(STAGE_KEY_PREFIX):]):
            raise SecretRefused(STAGE_NOT_ALLOWED, f"{name!r} is released only to its own stage")
        return seal(requester_hpke, value.reveal(), info=secret_info(name, broker_wg, requester_wg))


def open_secret(key: HpkePrivateKey, sealed: bytes, *, name: str, broker_wg: bytes,
                requester_wg: bytes) -> SecretValue:
    return SecretValue(key.open(sealed, info=secret_info(name, broker_wg, requester_wg)))


def sign_secret(private, sealed: bytes, *, name: str, broker_wg: bytes, requester_wg: bytes) -> bytes:
    """The releasing party's Ed25519 signature over a sealed secret and its context."""
    return sign_release(private, info=secret_info(name, broker_wg, requester_wg), sealed=sealed)


def open_signed_secret(key: HpkePrivateKey, sealed: bytes, signature: bytes, *, name: str, broker_wg: bytes,
                       requester_wg: bytes, sender_key: bytes) -> SecretValue:
    """The secret, only if `sender_key` (the sender's attested statement key, or the broker key the
    manifest names) signed it: raises sender_auth.ReleaseNotAuthenticated before opening
    (secret_not_authenticated), or SealError if the blob does not open."""
    info = secret_info(name, broker_wg, requester_wg)
    verify_release(sender_key, info=info, sealed=sealed, signature=signature)
    return SecretValue(key.open(sealed, info=info))
