"""Serving: Ray + vLLM launch over a pluggable cluster network, the local-cluster supervisor."""
