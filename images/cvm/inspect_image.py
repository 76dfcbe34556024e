#!/usr/bin/env python3
"""Inspect a built Conclave CVM image: what was built, checked from the artefacts themselves.

    python3 images/cvm/inspect_image.py OUTDIR [--json]

OUTDIR is mkosi's output folder (the one holding conclave-node_<ver>.raw/.efi/.root.raw/
.root.verity/.roothash). Why a separate tool: mkosi's own logs say what it meant to build;
this reads what it did build, so a recipe change that drops verity, loses the root hash from
the unified kernel image (UKI) or enables another service shows up as a failed check.

Facts gathered (each from its own source, no trust in mkosi's bookkeeping):
- the GPT of the disk image (sfdisk --json): ESP, root (x86-64) and root-verity partitions,
  and that the root/verity partitions hold exactly the split artefacts;
- `veritysetup verify` of the squashfs root against its hash tree and the *.roothash;
- the UKI's PE sections (.cmdline, .linux, .initrd, .osrel), read with a small PE parser;
- the squashfs listing (unsquashfs -lls): enabled units (symlinks under
  /etc/systemd/system/*.wants), sshd/getty presence, the venv and its variant marker;
- the ESP's files (mtools, userspace FAT): the boot loader and exactly the built UKI, no
  other boot entry (a Type #1 entry would boot the kernel without roothash=, i.e. no verity).
Tools: sfdisk (fdisk), veritysetup (cryptsetup-bin), unsquashfs (squashfs-tools), mtools.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import struct
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Discoverable Partitions Specification type GUIDs (x86-64).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
ROOT_X86_64_VERITY_TYPE = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"
SQUASHFS_MAGIC = b"hsqs"
VERITY_MAGIC = b"verity\0\0"


class InspectError(Exception):
    """An artefact is missing or unreadable (not a failed check: checks return facts)."""


@dataclass(frozen=True)
class Artefacts:
    disk: Path
    uki: Path
    root: Path
    verity: Path
    roothash: Path

    @classmethod
    def find(cls, outdir: Path) -> "Artefacts":
        found = {}
        for key, suffix in (("disk", ".raw"), ("uki", ".efi"), ("root", ".root.raw"),
                            ("verity", ".root.verity"), ("roothash", ".roothash")):
            matches = [p for p in outdir.glob(f"*{suffix}")
                       if key != "disk" or not p.name.endswith((".root.raw",))]
            if len(matches) != 1:
                raise InspectError(f"expected one *{suffix} in {outdir}, found {len(matches)}")
            found[key] = matches[0]
        return cls(**found)


def pe_sections(data: bytes) -> dict[str, bytes]:
    """Sections of a PE/COFF file (a UKI is one: systemd-stub plus added sections)."""
    if data[:2] != b"MZ":
        raise InspectError("not a PE file (no MZ header)")
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe:pe + 4] != b"PE\0\0":
        raise InspectError("not a PE file (no PE signature)")
    count, _, _, _, opt_size = struct.unpack_from("<HIIIH", data, pe + 6)
    table = pe + 24 + opt_size
    sections = {}
    for i in range(count):
        raw = data[table + 40 * i: table + 40 * (i + 1)]
        name = raw[:8].rstrip(b"\0").decode("ascii", "replace")
        vsize, _, rsize, offset = struct.unpack_from("<IIII", raw, 8)
        sections[name] = data[offset: offset + min(vsize, rsize) if vsize else offset + rsize]
    return sections


def gpt_partitions(disk: Path) -> list[dict]:
    out = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    table = json.loads(out)["partitiontable"]
    sector = table.get("sectorsize", 512)
    return [{"type": p["type"].upper(), "name": p.get("name", ""), "offset": p["start"] * sector,
             "size": p["size"] * sector} for p in table["partitions"]]


def _sha256_range(path: Path, offset: int, length: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    return _sha256_range(path, 0, path.stat().st_size)


def verity_verify(root: Path, verity: Path, roothash: str) -> bool:
    """`veritysetup verify` (userspace, no device-mapper): the whole root against the tree."""
    result = subprocess.run(["veritysetup", "verify", str(root), str(verity), roothash],
                            capture_output=True, text=True, timeout=600)
    return result.returncode == 0


def squashfs_listing(root: Path) -> dict[str, str]:
    """path -> symlink target ("" for other entries) of every entry in the squashfs root."""
    out = subprocess.run(["unsquashfs", "-lls", "-d", "", str(root)], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    entries = {}
    for line in out.splitlines():
        m = re.match(r"^[-dlcbps][rwxstST-]{9}\s+\S+\s+\S+\s+\S+\s+\S+\s+(/.*)$", line)
        if not m:
            continue
        path, _, target = m.group(1).partition(" -> ")
        entries[path] = target
    return entries


def squashfs_cat(root: Path, path: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["unsquashfs", "-q", "-n", "-d", f"{tmp}/x", str(root), path.lstrip("/")],
                       capture_output=True, timeout=120, check=True)
        target = Path(tmp) / "x" / path.lstrip("/")
        if not target.is_file():
            raise InspectError(f"{path} is not a regular file in the image")
        return target.read_bytes()


def esp_files(disk: Path, offset: int) -> list[str]:
    """Regular files of the FAT ESP at this byte offset of the disk image (mtools' mdir)."""
    out = subprocess.run(["mdir", "-i", f"{disk}@@{offset}", "-/", "-b", "::"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return sorted(line[len("::/"):] for line in out.splitlines()
                  if line.startswith("::/") and not line.endswith("/"))


def esp_file_bytes(disk: Path, offset: int, path: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["mcopy", "-n", "-i", f"{disk}@@{offset}", f"::/{path}", f"{tmp}/f"],
                       capture_output=True, timeout=60, check=True)
        return Path(tmp, "f").read_bytes()


def enabled_units(listing: dict[str, str]) -> dict[str, str]:
    """unit name -> the .wants/.requires folder (or alias) that enables it, from /etc."""
    masked = set(masked_units(listing))  # a masked unit never starts, whatever wants it
    units = {}
    for path, target in listing.items():
        m = re.match(r"^/etc/systemd/system/([^/]+\.(?:wants|requires))/([^/]+)$", path)
        if m and target:
            units[m.group(2)] = m.group(1)
        elif re.match(r"^/etc/systemd/system/[^/]+\.(service|socket|timer|path)$", path) \
                and target and target != "/dev/null":
            units[path.rsplit("/", 1)[1]] = "alias"
    return {unit: how for unit, how in units.items() if unit not in masked}


def masked_units(listing: dict[str, str]) -> list[str]:
    return sorted(p.rsplit("/", 1)[1] for p, t in listing.items()
                  if p.startswith("/etc/systemd/system/") and t == "/dev/null")


@dataclass
class Report:
    partitions: list[dict]
    root_partition_matches: bool
    verity_partition_matches: bool
    squashfs_magic: bool
    verity_magic: bool
    roothash: str
    verity_ok: bool
    cmdline: str
    cmdline_roothash: str | None
    cmdline_owner: str | None
    uki_sha256: str
    uki_sections: list[str]
    enabled_units: dict[str, str]
    masked_units: list[str]
    has_sshd: bool
    has_getty_units: list[str]
    variant: str | None
    conclave_dist_info: list[str]
    root_password_locked: bool
    esp_files: list[str]
    esp_uki_matches: bool
    sizes: dict[str, int] = field(default_factory=dict)


def inspect(outdir: Path) -> Report:
    art = Artefacts.find(outdir)
    parts = gpt_partitions(art.disk)
    by_type = {p["type"]: p for p in parts}
    root_size, verity_size = art.root.stat().st_size, art.verity.stat().st_size

    def holds(ptype: str, blob: Path, size: int) -> bool:
        p = by_type.get(ptype)
        return bool(p) and p["size"] >= size and \
            _sha256_range(art.disk, p["offset"], size) == _sha256_file(blob)

    roothash = art.roothash.read_text().strip()
    uki = art.uki.read_bytes()
    sections = pe_sections(uki)
    cmdline = sections.get(".cmdline", b"").rstrip(b"\0").decode().strip()
    words = dict(w.partition("=")[::2] for w in cmdline.split())
    listing = squashfs_listing(art.root)
    shadow = squashfs_cat(art.root, "/etc/shadow").decode()
    root_entry = next((line for line in shadow.splitlines() if line.startswith("root:")), "")
    root_pw = root_entry.split(":")[1] if root_entry.count(":") >= 2 else ""
    esp = by_type.get(ESP_TYPE)
    esp_list = esp_files(art.disk, esp["offset"]) if esp else []
    esp_ukis = [f for f in esp_list if re.fullmatch(r"EFI/Linux/[^/]+\.efi", f)]
    esp_uki_matches = len(esp_ukis) == 1 and \
        esp_file_bytes(art.disk, esp["offset"], esp_ukis[0]) == uki
    variant = None
    if "/opt/conclave/VARIANT" in listing:
        variant = squashfs_cat(art.root, "/opt/conclave/VARIANT").decode().strip()
    return Report(
        partitions=parts,
        root_partition_matches=holds(ROOT_X86_64_TYPE, art.root, root_size),
        verity_partition_matches=holds(ROOT_X86_64_VERITY_TYPE, art.verity, verity_size),
        squashfs_magic=art.root.open("rb").read(4) == SQUASHFS_MAGIC,
        verity_magic=art.verity.open("rb").read(8) == VERITY_MAGIC,
        roothash=roothash,
        verity_ok=verity_verify(art.root, art.verity, roothash),
        cmdline=cmdline,
        cmdline_roothash=words.get("roothash"),
        cmdline_owner=words.get("conclave.owner"),
        uki_sha256=hashlib.sha256(uki).hexdigest(),
        uki_sections=sorted(sections),
        enabled_units=enabled_units(listing),
        masked_units=masked_units(listing),
        has_sshd=any(p.endswith("/sbin/sshd") for p in listing),
        has_getty_units=sorted(p for p in listing
                               if re.search(r"/lib/systemd/system/[^/]*getty[^/]*\.service$", p)),
        variant=variant,
        conclave_dist_info=sorted(p for p in listing
                                  if re.match(r"^/opt/conclave/venv/lib/python3[^/]*/"
                                              r"site-packages/conclave-[^/]+\.dist-info$", p)),
        # a locked root has a password field starting with "!" or "*" (no password login)
        root_password_locked=root_pw.startswith(("!", "*")),
        esp_files=esp_list,
        esp_uki_matches=esp_uki_matches,
        sizes={"disk": art.disk.stat().st_size, "uki": len(uki), "root": root_size,
               "verity": verity_size},
    )


# Besides the node agent, the recipe enables networking only (mkosi.extra/etc/systemd/
# system-preset/00-conclave.preset; mkosi.postinst runs `systemctl preset-all`): DHCP through
# systemd-networkd and name resolution through systemd-resolved, with their D-Bus aliases.
# Anything else enabled in /etc is a finding: the agent must be the image's only service.
SYSTEMD_BASICS = frozenset({
    "systemd-networkd.service", "systemd-networkd.socket", "systemd-network-generator.service",
    "dbus-org.freedesktop.network1.service", "systemd-resolved.service",
    "dbus-org.freedesktop.resolve1.service",
})
NODE_SERVICE = "conclave-node.service"
# The ESP holds systemd-boot (twice: its own path and the removable-media fallback), its
# settings, and the one UKI under EFI/Linux/ (checked byte for byte against the split UKI).
ESP_ALLOWED = frozenset({"EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi",
                         "loader/loader.conf"})


def problems(report: Report, owner: str | None = None) -> list[str]:
    """Stable reason codes for every way the image differs from what the recipe promises."""
    found = []
    types = [p["type"] for p in report.partitions]
    for reason, ptype in (("no_esp", ESP_TYPE), ("no_root_partition", ROOT_X86_64_TYPE),
                          ("no_verity_partition", ROOT_X86_64_VERITY_TYPE)):
        if types.count(ptype) != 1:
            found.append(reason)
    if not report.squashfs_magic:
        found.append("root_not_squashfs")
    if not report.verity_magic:
        found.append("verity_superblock_missing")
    if not report.root_partition_matches:
        found.append("root_partition_mismatch")
    if not report.verity_partition_matches:
        found.append("verity_partition_mismatch")
    if not re.fullmatch(r"[0-9a-f]{64}", report.roothash):
        found.append("roothash_malformed")
    if not report.verity_ok:
        found.append("verity_verify_failed")
    if report.cmdline_roothash != report.roothash:
        found.append("cmdline_roothash_mismatch")
    if report.cmdline_owner is None or not re.fullmatch(r"[0-9a-f]{64}", report.cmdline_owner) \
            or (owner is not None and report.cmdline_owner != owner):
        found.append("cmdline_owner_mismatch")
    if not {".linux", ".initrd", ".cmdline", ".osrel"} <= set(report.uki_sections):
        found.append("uki_sections_missing")
    if report.enabled_units.get(NODE_SERVICE) != "multi-user.target.wants":
        found.append("node_service_not_enabled")
    extra = sorted(set(report.enabled_units) - SYSTEMD_BASICS - {NODE_SERVICE})
    if extra:
        found.append("extra_enabled_units:" + ",".join(extra))
    if report.has_sshd:
        found.append("sshd_present")
    if report.has_getty_units:
        found.append("getty_present")
    if not report.root_password_locked:
        found.append("root_password_set")
    unexpected = [f for f in report.esp_files if f not in ESP_ALLOWED
                  and not re.fullmatch(r"EFI/Linux/[^/]+\.efi", f)]
    if unexpected:
        found.append("esp_unexpected_files:" + ",".join(unexpected))
    if not report.esp_uki_matches:
        found.append("esp_uki_mismatch")
    if len(report.conclave_dist_info) != 1:
        found.append("conclave_venv_missing")
    if report.variant not in ("production", "recipe-check"):
        found.append("variant_unknown")
    return found


def extract_boot_parts(uki: Path, dest: Path) -> dict[str, Path]:
    """Write the UKI's kernel, initrd and command line as files (for measured direct boot)."""
    sections = pe_sections(uki.read_bytes())
    out = {}
    for name, section in (("kernel", ".linux"), ("initrd", ".initrd"), ("cmdline", ".cmdline")):
        if section not in sections:
            raise InspectError(f"UKI has no {section} section")
        path = dest / f"uki{section}"
        path.write_bytes(sections[section].rstrip(b"\0") if name == "cmdline"
                         else sections[section])
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--owner", help="expected conclave.owner= fingerprint (64 hex)")
    parser.add_argument("--extract", type=Path,
                        help="also write the UKI's .linux/.initrd/.cmdline into this folder")
    args = parser.parse_args(argv)
    try:
        report = inspect(args.outdir)
        if args.extract:
            args.extract.mkdir(parents=True, exist_ok=True)
            extract_boot_parts(Artefacts.find(args.outdir).uki, args.extract)
    except (InspectError, subprocess.CalledProcessError, OSError) as exc:
        print(f"inspect_image: {exc}", file=sys.stderr)
        return 2
    found = problems(report, args.owner)
    print(json.dumps({"ok": not found, "problems": found, "report": asdict(report)},
                     indent=2, sort_keys=True))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
