"""conclave.runtime.keys: HPKE sealing to attested keys and the secrets broker."""
