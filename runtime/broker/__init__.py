"""The model owner's key broker: stage K's shard key, released only to the node admitted as stage K."""
