"""conclave.overlay: the attested WireGuard overlay (identity, admission, device, rendezvous).

How two nodes A and B end up with a tunnel (every message is in proto/conclave.proto):
 1. Each boots with fresh in-memory keys (keys.py: WireGuard X25519; runtime/keys/hpke.py:
    ML-KEM-768+X25519 HPKE) and announces them to every rendezvous it knows (rendezvous.py).
    The rendezvous is untrusted: it only relays announcements.
 2. A challenges B with a fresh single-use nonce (nonces.py); B answers with evidence whose
    REPORT_DATA binds the manifest digest, both public keys, the nonce, its role, name and
    overlay address (admission.py). A parses, verifies, checks the binding, validates against
    the policy: B is admitted by A. B does the same to A, independently.
 3. Key release (keyrelease.py): the pair's follower (higher WireGuard key) asks the leader for
    the PSK; the leader answers only if it admitted the follower, sealing a fresh PSK to the
    follower's attested HPKE key. The follower proves it opened it (HMAC): that is its
    admission confirmation, and only then do both configure each other. No mutual admission,
    no tunnel.
 4. The device (device.py: kernel WireGuard or wireguard-go via `wg`) is reconciled towards a
    pure function of the mutually admitted peers (desired.py, reconcile.py): each peer exactly
    its /32, its PSK, its endpoint. Eviction (failed/expired re-attestation, policy change)
    removes the peer at the next reconcile, which an eviction triggers immediately.
 5. Liveness (liveness.py): each side Pings every admitted peer every few seconds; silence
    evicts (peer_unreachable), a reply from another key evicts at once (identity_changed).
    Liveness only ever evicts; a peer that is back is re-admitted through step 2 and re-keyed
    through step 3. A device whose daemon died is recreated with the same keys and peers.
The node agent that drives all this is conclave.runtime.agent.
"""
