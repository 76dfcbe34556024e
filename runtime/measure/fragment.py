"""The attestation-policy fragment for the deployment manifest, from computed measurements.

Why validate here: a fragment that the manifest would later reject (wrong field, wrong
length) should fail where it was made. The fragment is checked against the one policy schema
(runtime/attestation/policy.py) by completing it into a minimal production policy.

Shape: {"tdx": {"mr_td": [hex], "rtmr0": [hex], ...}} and/or {"snp": {"measurement": [hex]}};
every field a one-element allow-list, so fragments from several images merge by concatenating
lists (or the owner moves them into measurement_sets to bind the fields together).
"""
from __future__ import annotations

import json
from typing import Any

import jsonschema
import yaml

from conclave.runtime.attestation.policy import POLICY_JSON_SCHEMA
from conclave.runtime.errors import ConclaveError, ExitCode


def tdx_fragment(mr_td: bytes | None, rtmrs: list[bytes] | None) -> dict[str, Any]:
    section: dict[str, list[str]] = {}
    if mr_td is not None:
        section["mr_td"] = [mr_td.hex()]
    if rtmrs is not None:
        if len(rtmrs) != 4:
            raise ValueError("expected four RTMRs")
        for i, value in enumerate(rtmrs):
            section[f"rtmr{i}"] = [value.hex()]
    if not section:
        raise ConclaveError("usage", "nothing measured: give firmware and/or an event log",
                            exit_code=ExitCode.USAGE)
    return {"tdx": section}


def snp_fragment(measurement: bytes) -> dict[str, Any]:
    return {"snp": {"measurement": [measurement.hex()]}}


def validate_fragment(fragment: dict[str, Any]) -> None:
    """Raise policy_invalid unless the fragment fits the attestation policy schema."""
    tees = [t for t in ("tdx", "snp") if t in fragment]
    candidate = {"production": True, "allowed_tee": tees or ["tdx"], **fragment}
    try:
        jsonschema.validate(candidate, POLICY_JSON_SCHEMA)
    except jsonschema.ValidationError as exc:
        raise ConclaveError("policy_invalid", f"fragment does not fit the policy schema: "
                            f"{exc.message}", exit_code=ExitCode.MALFORMED) from exc


def render(fragment: dict[str, Any], fmt: str) -> str:
    validate_fragment(fragment)
    if fmt == "json":
        return json.dumps(fragment, indent=2, sort_keys=True) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(fragment, sort_keys=True)
    raise ValueError(f"unknown format {fmt!r}")
