#!/bin/sh
# Regenerate conclave_pb2.py / conclave_pb2_grpc.py from conclave.proto with grpc_tools.protoc.
# The proto is compiled under its import path conclave/overlay/proto/ so the generated modules
# import each other as `conclave.overlay.proto.conclave_pb2`.
# Usage: overlay/proto/generate.sh [OUTPUT_DIR]   (default: this folder)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
python=${PYTHON:-"$here/../../.venv/bin/python"}
[ -x "$python" ] || python=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src/conclave/overlay/proto" "$tmp/out"
cp "$here/conclave.proto" "$tmp/src/conclave/overlay/proto/"
"$python" -m grpc_tools.protoc -I "$tmp/src" --python_out="$tmp/out" --grpc_python_out="$tmp/out" \
  conclave/overlay/proto/conclave.proto
cp "$tmp/out/conclave/overlay/proto/conclave_pb2.py" "$tmp/out/conclave/overlay/proto/conclave_pb2_grpc.py" "$out/"
