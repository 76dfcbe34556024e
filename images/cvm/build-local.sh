#!/usr/bin/env bash
# Build the CVM image with mkosi 14 into a folder OUTSIDE the repository.
#
#   images/cvm/build-local.sh OUTDIR OWNER_FINGERPRINT [extra mkosi options...]
#
# OWNER_FINGERPRINT: the deployment owner's key fingerprint (64 lowercase hex), written to the
#   unified kernel image's measured command line as conclave.owner=.
# CONCLAVE_IMAGE_VARIANT: recipe-check (default here) puts only the conclave wheel built from
#   this checkout into the venv (no dependencies: proves the recipe, cannot serve);
#   production needs CONCLAVE_WHEELHOUSE=DIR holding every wheel of the hashed
#   images/gpu/requirements.lock, and refuses while that lock is unpinned.
# CONCLAVE_MKOSI_CACHE: where downloaded .debs are kept between builds
#   (default /var/tmp/conclave-mkosi-cache).
#
# Results: OUTDIR/out/debian~bookworm/conclave-node_0.1.0.{raw,efi,root.raw,root.verity,
# roothash,manifest}; check them with images/cvm/inspect_image.py. Needs root, mkosi 14
# (Debian `mkosi`), loop devices, systemd-nspawn and a Debian mirror (pass --mirror=URL for a
# snapshot). Timings and results of a measured run: images/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
die() { printf 'build-local: %s\n' "$*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 OUTDIR OWNER_FINGERPRINT [mkosi options...]"
OUTDIR="$1"; OWNER="$2"; shift 2
VARIANT="${CONCLAVE_IMAGE_VARIANT:-recipe-check}"
[ "$(id -u)" -eq 0 ] || die "run as root (loop devices, systemd-nspawn)"
command -v mkosi >/dev/null || die "mkosi not installed (apt-get install mkosi)"
for tool in mdir mdeltree veritysetup unsquashfs; do
    command -v "$tool" >/dev/null \
        || die "$tool missing (apt-get install mtools cryptsetup-bin squashfs-tools)"
done
[[ "$OWNER" =~ ^[0-9a-f]{64}$ ]] || die "OWNER_FINGERPRINT must be 64 lowercase hex"

OUTDIR="$(realpath -m "$OUTDIR")"
case "$OUTDIR/" in "$ROOT"/*) die "OUTDIR must be outside the repository ($ROOT)";; esac
mkdir -p "$OUTDIR"
rm -rf "$OUTDIR/out" "$OUTDIR/tree" "$OUTDIR/measure-inputs" "$OUTDIR/inspect.json"
WHEELS="$OUTDIR/tree/root/wheelhouse"   # becomes /root/wheelhouse in the image (mkosi.postinst)
mkdir -p "$OUTDIR/out" "$WHEELS"
CACHE="${CONCLAVE_MKOSI_CACHE:-/var/tmp/conclave-mkosi-cache}"
mkdir -p "$CACHE"

case "$VARIANT" in
    recipe-check) ;;
    production)
        LOCK="$ROOT/images/gpu/requirements.lock"
        grep -q -- '--hash=sha256:' "$LOCK" || die "refusing: $LOCK has no hashes (release step)"
        [ -d "${CONCLAVE_WHEELHOUSE:-}" ] || die "production needs CONCLAVE_WHEELHOUSE=DIR"
        cp "$LOCK" "$WHEELS/requirements.lock"
        cp "$CONCLAVE_WHEELHOUSE"/*.whl "$WHEELS/" ;;
    *) die "CONCLAVE_IMAGE_VARIANT must be recipe-check or production" ;;
esac

# The conclave wheel from this checkout, pinned by its own hash.
PY="${PYTHON:-$ROOT/.venv/bin/python}"
BUILD_TMP="$(mktemp -d)"
trap 'rm -rf "$BUILD_TMP"' EXIT
"$PY" -m pip wheel --disable-pip-version-check -q --no-deps --no-build-isolation \
    -w "$BUILD_TMP" "$ROOT" >"$BUILD_TMP/wheel.log" 2>&1 \
    || { cat "$BUILD_TMP/wheel.log" >&2; die "building the conclave wheel failed"; }
shopt -s nullglob
wheels=("$BUILD_TMP"/conclave-*.whl)
[ ${#wheels[@]} -eq 1 ] || die "expected one conclave wheel, found ${#wheels[@]}"
cp "${wheels[0]}" "$WHEELS/"
version="$(basename "${wheels[0]}" | cut -d- -f2)"
digest="$(sha256sum "${wheels[0]}" | cut -d' ' -f1)"
printf 'conclave==%s --hash=sha256:%s\n' "$version" "$digest" > "$WHEELS/conclave.lock"

# Timestamps in the squashfs and the UKI follow the last commit, so rebuilds compare.
SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)"
export SOURCE_DATE_EPOCH

# Sandbox kernels (e.g. Firecracker guests) may lack vfat and the GPT partition parser that
# mkosi 14 relies on: images/cvm/sandbox-shim then stages the ESP in a tmpfs written back to the
# FAT partition with mtools, and keeps mkosi's loop partitions alive. See each shim's comments.
if ! grep -qw vfat /proc/filesystems && ! modprobe -q vfat 2>/dev/null; then
    printf 'build-local: kernel has no vfat; using images/cvm/sandbox-shim\n' >&2
    export PATH="$ROOT/images/cvm/sandbox-shim:$PATH"
fi

# Deterministic dm-verity salt and UUID derived from the root's content (see the shim).
export PATH="$ROOT/images/cvm/repro-shim:$PATH"

start=$(date +%s)
# --nspawn-keep-unit: systemd-nspawn runs in the caller's scope (works inside containers and
# CI runners that have no system bus).
nice -n 19 mkosi -C "$ROOT/images/cvm" \
    --output-dir "$OUTDIR/out" --cache "$CACHE" --extra-tree "$OUTDIR/tree" \
    --nspawn-keep-unit --force \
    --environment "CONCLAVE_IMAGE_VARIANT=$VARIANT" \
    --kernel-command-line "conclave.owner=$OWNER" \
    "$@" build
chmod -R go-w "$OUTDIR/out"   # mkosi 14 leaves its outputs world-writable
printf 'build-local: %s image built in %ss into %s/out\n' "$VARIANT" "$(( $(date +%s) - start ))" \
    "$OUTDIR" >&2

# The Type #1 entry's kernel and initrd that mkosi 14 built the UKI from are still on the ESP
# (mkosi.postinst removed the entry itself): delete them from the finished disk image. The ESP
# is outside dm-verity; nothing else on it changes.
IMAGE_DIR="$(dirname "$(find "$OUTDIR/out" -name '*.root.raw' | head -n1)")"
DISK="$(find "$IMAGE_DIR" -name '*.raw' ! -name '*.root.raw' | head -n1)"
ESP_OFFSET="$(sfdisk --json "$DISK" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
print(next(p["start"] for p in t["partitions"]
           if p["type"].upper() == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B") * t.get("sectorsize", 512))')"
for entry_dir in $(mdir -i "$DISK@@$ESP_OFFSET" -b :: | grep -E '^::/[0-9a-f]{32}/$' || true); do
    mdeltree -i "$DISK@@$ESP_OFFSET" "${entry_dir%/}"
done

# objcopy (binutils 2.40) stamps the UKI with the build time; pin it to SOURCE_DATE_EPOCH so
# rebuilds give the same UKI (and the same Authenticode digest), on the ESP as well.
UKI="$(find "$IMAGE_DIR" -name '*.efi' | head -n1)"
python3 "$ROOT/images/cvm/pe_timestamp.py" "$UKI" "$SOURCE_DATE_EPOCH"
mcopy -o -i "$DISK@@$ESP_OFFSET" "$UKI" "::/EFI/Linux/$(basename "$UKI")"

# Check what was built, and keep the UKI's own kernel, initrd and command line beside it for
# `conclave measure`. mkosi 14's split *.cmdline is NOT the UKI's: it carries root=LABEL=root
# instead of roothash=..., so it is replaced with the UKI's .cmdline section.
python3 "$ROOT/images/cvm/inspect_image.py" "$IMAGE_DIR" --owner "$OWNER" \
    --extract "$OUTDIR/measure-inputs" > "$OUTDIR/inspect.json" \
    || { cat "$OUTDIR/inspect.json" >&2; die "the built image failed its checks ($OUTDIR/inspect.json)"; }
for split in "$IMAGE_DIR"/*.cmdline; do cp "$OUTDIR/measure-inputs/uki.cmdline" "$split"; done
printf 'build-local: checks passed (%s); measure inputs in %s/measure-inputs\n' \
    "$OUTDIR/inspect.json" "$OUTDIR" >&2
