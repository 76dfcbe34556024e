"""The local cluster: N hosts on one machine (network namespaces), each running a bare `conclave node`.

This room only plays the machines: hosts and namespaces (hosts.py), each host's evidence source and
the cluster's trust material (trust.py), a per-host service manager and the published port
(orchestrator.py, forwarder.py, attested.py), and the state file `conclave status`/`down` read.
It never verifies, launches or decides anything on a node's behalf (the plain-veth baseline,
network.py, is the one exception: it has no nodes, so the orchestrator starts Ray and vLLM itself).
"""
