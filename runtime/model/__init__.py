"""Models: GGUF import into a Hugging Face folder, the model manifest (per-layer digests), the registry."""
