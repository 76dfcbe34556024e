"""Signed run report (engine/model digests, per-stage evidence and shards, re-attestations)."""
from conclave.runtime.report.document import (ReattestationEvent, ReportError, ReportReason,
                                              ReportSigner, RunReport, StageRecord, VerifiedReport,
                                              events_for, verify_report)

__all__ = ["ReattestationEvent", "ReportError", "ReportReason", "ReportSigner", "RunReport",
           "StageRecord", "VerifiedReport", "events_for", "verify_report"]
