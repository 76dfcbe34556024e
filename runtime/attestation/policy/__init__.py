"""Appraisal policy: which verified evidence a deployment accepts.

Why a separate step: verification answers "is this genuine hardware evidence?"; validation
answers "is it what *we* want to run?". Validation collects EVERY violation so an operator sees
all mismatched measurements at once (DESIGN.md convention 3).

Rules that are not negotiable (no policy field can turn them off):
- debug-mode TEEs are always refused (`debug_enabled`); there is no allow_debug.
- TCB status "Revoked" is never accepted, even when listed (listing it is `policy_invalid`).
- `production` is required; `unsafe_allow_simulated: true` together with `production: true`
  (or "sim" in allowed_tee under production) is `policy_invalid`.
- A policy must name a code identity for every allowed TEE (IDENTITY_FIELDS: TDX `mr_td`, SNP
  `measurement` / `id_key_digest` / `author_key_digest`, NVIDIA GPU `measurements`, sim
  `measurement`; in a `measurement_sets` list every set must carry one), else it is
  `policy_empty`: "accept any genuine TDX VM" is never what an operator means, and fields such as
  SNP host_data/chip_id, TDX mr_seam/mr_owner/xfam or GPU driver versions do not say which code
  runs.

Safe defaults; each weakening is an explicit field (DESIGN.md convention 5):
- SNP: VMPL 0 unless `allowed_vmpl` lists others (`vmpl_not_allowed`); a guest policy allowing a
  migration agent (MIGRATE_MA) is refused (`migration_allowed`) unless `unsafe_allow_migrate_ma`,
  which a production policy cannot set; a production policy must set `min_tcb`.
- TDX: MRSERVICETD must be all zero (no service TD bound to the guest) unless `mr_servicetd`
  lists allowed values (`servicetd_not_allowed`). TD_ATTRIBUTES (Intel TDX ABI, TDATTRIBUTES):
  no bit of the TUD group (bits 0-7, "TD under debug": DEBUG and the profiling bits) may be set
  (`debug_enabled`); MIGRATABLE (bit 29) is refused (`migration_allowed`) unless
  `unsafe_allow_migratable`; SEPT_VE_DISABLE (bit 28) must be set (`sept_ve_enabled`: without it
  the host can inject #VE on secure-EPT violations, which a Linux guest refuses too) unless
  `unsafe_allow_sept_ve`. Neither weakening is allowed in production, and a production policy
  allowing tdx must list its `xfam` values (the CPU features exposed to the TD).
- Any TEE: advisory IDs listed in `denied_advisories` are refused (`advisory_denied`).

One schema (POLICY_JSON_SCHEMA, exported verbatim to policy.schema.json); YAML or JSON input.
"""
from __future__ import annotations

from conclave.runtime.attestation.policy.schema import *  # noqa: F401,F403
from conclave.runtime.attestation.policy.schema import POLICY_JSON_SCHEMA, SCHEMA_PATH, export_schema  # noqa: F401
from conclave.runtime.attestation.policy.load import (RIM_TEST_ROOTS, Policy, _canonical,  # noqa: F401
                                                      _constrains_identity)
from conclave.runtime.attestation.policy.validate import ValidatedEvidence, validate, violations  # noqa: F401
