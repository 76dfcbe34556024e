"""The node lifecycle: what one `conclave node` does after it is meshed (shard, Ray, the head's engine)."""
