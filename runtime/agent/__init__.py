"""conclave.runtime.agent: the node agent (boot -> attested -> meshed -> serving -> draining)."""
