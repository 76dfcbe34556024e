"""conclave.runtime: attestation, node agent, serving, keys and the CLI."""
