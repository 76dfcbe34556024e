"""Generated protobuf/gRPC modules for conclave.proto (see generate.sh)."""
