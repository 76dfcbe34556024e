#!/usr/bin/env bash
# Build the GPU node image from pinned inputs only (see images/README.md).
#   images/gpu/build.sh [TAG]      (docker or podman; run from anywhere)
# Refuses to build when a base digest or a Python hash is missing (check_pins.py).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TAG="${1:-conclave-node:dev}"
ENGINE="${CONTAINER_ENGINE:-$(command -v podman || command -v docker)}"
mapfile -t BUILD_ARGS < <(python3 "$HERE/check_pins.py" --print-build-args)
[ "${#BUILD_ARGS[@]}" -gt 0 ] || { echo "build.sh: pins missing" >&2; exit 1; }
# SOURCE_DATE_EPOCH from the last commit: same source, same timestamps in the layers.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct)}"
exec "$ENGINE" build -f "$HERE/Containerfile" "${BUILD_ARGS[@]}" \
    --build-arg "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH" -t "$TAG" "$ROOT"
