"""Client-verifiable endpoint: attestation bundle (head side), verification, `conclave verify`, proxy."""
from conclave.runtime.endpoint.binding import (PURPOSE_HEAD, head_report_data, node_report_data,
                                               spki_sha256)
from conclave.runtime.endpoint.bundle import BundleBuilder, nonce_from_query, parse_bundle
from conclave.runtime.endpoint.tls import HeadTlsIdentity, generate_head_identity
from conclave.runtime.endpoint.verify import BundleResult, EndpointReason, NodeResult, verify_bundle

__all__ = ["PURPOSE_HEAD", "head_report_data", "node_report_data", "spki_sha256", "BundleBuilder",
           "nonce_from_query", "parse_bundle", "HeadTlsIdentity", "generate_head_identity",
           "BundleResult", "EndpointReason", "NodeResult", "verify_bundle"]
