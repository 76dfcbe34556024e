"""Secrets broker: releases named secrets, HPKE-sealed, to admitted nodes whose role may have them.

The caller (the node service) looks the requester up among the peers this node admitted; the
broker then applies the per-secret role map and seals to the requester's attested HPKE key,
with a context that names the secret and both nodes, so a sealed blob is useless elsewhere.
"""
from __future__ import annotations

from typing import Mapping

from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.keys.hpke import HpkePrivateKey, HpkePublicKey, context_info, seal
from conclave.runtime.keys.secret import SecretValue

SECRET_PURPOSE = "conclave/secret/v1"
RAY_TOKEN = "ray_token"
MODEL_KEY = "model_key"
DEFAULT_ALLOWED_ROLES: dict[str, frozenset[str]] = {
    RAY_TOKEN: frozenset({"head", "worker"}),
    MODEL_KEY: frozenset({"head", "worker"}),
}


class SecretRefused(ConclaveError):
    exit_code = ExitCode.POLICY_VIOLATED

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)


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

    def release(self, name: str, *, requester_role: str, requester_hpke: HpkePublicKey,
                requester_wg: bytes, broker_wg: bytes) -> bytes:
        """Sealed secret for an ADMITTED requester (the caller checked admission)."""
        value = self._secrets.get(name)
        if value is None:
            raise SecretRefused("unknown_secret", f"no secret named {name!r} here")
        if requester_role not in self.allowed_roles.get(name, frozenset()):
            raise SecretRefused("role_not_allowed", f"role {requester_role} may not receive {name!r}")
        return seal(requester_hpke, value.reveal(), info=secret_info(name, broker_wg, requester_wg))


def open_secret(key: HpkePrivateKey, sealed: bytes, *, name: str, broker_wg: bytes,
                requester_wg: bytes) -> SecretValue:
    return SecretValue(key.open(sealed, info=secret_info(name, broker_wg, requester_wg)))
