"""Hosts: the machines a cluster runs on. Local mode builds them as network namespaces."""
