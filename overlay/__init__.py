"""conclave.overlay: the attested WireGuard overlay (identity, admission, device, rendezvous)."""
