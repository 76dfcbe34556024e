"""images/cvm: the real mkosi build, the image inspector, and the recipe's guards.

test_mkosi_builds_the_recipe_check_image runs images/cvm/build-local.sh for real (2.5-7 min
here, see images/README.md) and checks what it built. The fast tests cover what decides
whether a build is right:
- images/cvm/inspect_image.py, on a disk image assembled with the same tools mkosi uses
  (mksquashfs, veritysetup format, sfdisk, objcopy adding a .cmdline section to a PE file):
  a faithful image passes, and each defect (tampered root, wrong or missing roothash= on the
  UKI command line, another enabled service, sshd, a root password, a second boot entry or
  another UKI on the ESP) gives its reason code;
- the PE section reader agrees with binutils' objdump;
- the repro shim's `veritysetup format` gives the same root hash for the same data (salt and
  UUID derived from it) where the real default does not; pe_timestamp.py pins the UKI's PE
  time stamp with a checksum that matches objcopy's algorithm;
- mkosi.postinst refuses unknown variants, a missing wheelhouse and unhashed locks before it
  touches anything (python3 and systemctl are fakes on PATH that fail if reached);
- build-local.sh refuses a malformed owner, an output folder inside the repository and the
  production variant while images/gpu/requirements.lock is unpinned.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CVM = ROOT / "images" / "cvm"
OWNER = "c0" * 32
TOOLS = {"mksquashfs": "squashfs-tools", "unsquashfs": "squashfs-tools",
         "veritysetup": "cryptsetup-bin", "sfdisk": "fdisk", "objcopy": "binutils",
         "objdump": "binutils", "mkfs.fat": "dosfstools", "mcopy": "mtools", "mdir": "mtools",
         "mmd": "mtools"}


def _load_inspector():
    spec = importlib.util.spec_from_file_location("conclave_inspect_image",
                                                  CVM / "inspect_image.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class builds
    spec.loader.exec_module(module)
    return module


ii = _load_inspector()


@pytest.fixture(scope="module", autouse=True)
def _tools():
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    if missing:
        pytest.fail("missing image tools: " + ", ".join(missing))


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, check=True,
                          **kw)


def _root_tree(base: Path, *, extra_unit: str | None = None, sshd: bool = False,
               root_pw: str = "*", mask_extra: bool = False) -> Path:
    tree = base / "tree"
    system = tree / "etc/systemd/system"
    (system / "multi-user.target.wants").mkdir(parents=True)
    (system / "sockets.target.wants").mkdir()
    (tree / "usr/lib/systemd/system").mkdir(parents=True)
    (system / "conclave-node.service").write_text("[Service]\nExecStart=/bin/true\n")
    os.symlink("../conclave-node.service", system / "multi-user.target.wants/conclave-node.service")
    os.symlink("/lib/systemd/system/systemd-networkd.service",
               system / "multi-user.target.wants/systemd-networkd.service")
    os.symlink("/lib/systemd/system/systemd-networkd.socket",
               system / "sockets.target.wants/systemd-networkd.socket")
    os.symlink("/dev/null", system / "getty.target")
    if extra_unit:
        os.symlink(f"/lib/systemd/system/{extra_unit}",
                   system / "multi-user.target.wants" / extra_unit)
        if mask_extra:
            os.symlink("/dev/null", system / extra_unit)
    if sshd:
        (tree / "usr/sbin").mkdir(parents=True)
        (tree / "usr/sbin/sshd").write_bytes(b"\x7fELF")
    (tree / "etc/shadow").write_text(f"root:{root_pw}:19000:0:99999:7:::\n")
    site = tree / "opt/conclave/venv/lib/python3.11/site-packages/conclave-0.1.0.dist-info"
    site.mkdir(parents=True)
    (site / "METADATA").write_text("Name: conclave\nVersion: 0.1.0\n")
    (tree / "opt/conclave/VARIANT").write_text("recipe-check\n")
    return tree


def _uki(path: Path, cmdline: str, workdir: Path) -> None:
    """A PE file with the UKI's sections, added the way mkosi 14 adds them (objcopy)."""
    stub = workdir / "stub.efi"
    _run("objcopy", "--target=efi-app-x86_64", "/usr/bin/true", str(stub))
    args = []
    for name, vma, content in ((".osrel", "0x20000", b"ID=debian\n"),
                               (".cmdline", "0x30000", cmdline.encode()),
                               (".linux", "0x2000000", b"MZ-kernel" * 100),
                               (".initrd", "0x3000000", b"070701-initrd" * 100)):
        blob = workdir / f"section{name}"
        blob.write_bytes(content)
        args += ["--add-section", f"{name}={blob}", "--change-section-vma", f"{name}={vma}"]
    _run("objcopy", *args, str(stub), str(path))


def _esp(path: Path, uki: Path, extra: dict[str, bytes]) -> None:
    """A FAT ESP laid out as mkosi + bootctl leave it, plus `extra` files."""
    path.write_bytes(b"")
    os.truncate(path, 4 << 20)
    _run("mkfs.fat", "-n", "EFI", str(path))
    files = {"EFI/BOOT/BOOTX64.EFI": b"MZ-boot", "EFI/systemd/systemd-bootx64.efi": b"MZ-boot",
             "loader/loader.conf": b"#timeout 3\n", f"EFI/Linux/{uki.name}": uki.read_bytes(),
             **extra}
    made = set()
    for name, content in files.items():
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if folder not in made:
                _run("mmd", "-i", str(path), f"::/{folder}")
                made.add(folder)
        blob = path.parent / "esp-file"
        blob.write_bytes(content)
        _run("mcopy", "-i", str(path), str(blob), f"::/{name}")


def _disk(path: Path, esp: Path, root: Path, verity: Path) -> None:
    """GPT disk: ESP, root (x86-64), root-verity (x86-64), the blobs written in place."""
    mib = 1 << 20
    sizes = [esp.stat().st_size, root.stat().st_size, verity.stat().st_size]
    sectors = [-(-s // 512) for s in sizes]
    path.write_bytes(b"")
    os.truncate(path, mib + sum(-(-s // mib) * mib for s in sizes) + mib)
    spec = "label: gpt\n" + "".join(
        f"size={n}, type={t}\n" for n, t in zip(sectors, (ii.ESP_TYPE, ii.ROOT_X86_64_TYPE,
                                                         ii.ROOT_X86_64_VERITY_TYPE)))
    _run("sfdisk", "--quiet", str(path), input=spec)
    parts = ii.gpt_partitions(path)
    with path.open("r+b") as disk:
        for part, blob in zip(parts, (esp, root, verity)):
            disk.seek(part["offset"])
            disk.write(blob.read_bytes())


def build_image(base: Path, *, cmdline_roothash: str | None = "auto", owner: str = OWNER,
                esp_extra: dict[str, bytes] | None = None, **tree_options) -> Path:
    """An output folder shaped like mkosi's, made with the real tools."""
    out = base / "out"
    out.mkdir(parents=True)
    name = "conclave-node_0.1.0"
    root, verity = out / f"{name}.root.raw", out / f"{name}.root.verity"
    tree = _root_tree(base, **tree_options)
    _run("mksquashfs", str(tree), str(root), "-noappend", "-quiet", "-all-root")
    formatted = _run("veritysetup", "format", str(root), str(verity)).stdout
    roothash = re.search(r"Root hash:\s+([0-9a-f]{64})", formatted).group(1)
    (out / f"{name}.roothash").write_text(roothash + "\n")
    words = ["console=ttyS0", "lockdown=confidentiality"]
    if owner:
        words.append(f"conclave.owner={owner}")
    if cmdline_roothash:
        words.append(f"roothash={roothash if cmdline_roothash == 'auto' else cmdline_roothash}")
    _uki(out / f"{name}.efi", " ".join(words), base)
    _esp(base / "esp.img", out / f"{name}.efi", esp_extra or {})
    _disk(out / f"{name}.raw", base / "esp.img", root, verity)
    return out


def test_faithful_image_has_no_problems(tmp_path):
    out = build_image(tmp_path)
    report = ii.inspect(out)
    assert ii.problems(report, OWNER) == []
    assert report.verity_ok and report.root_partition_matches and report.verity_partition_matches
    assert report.cmdline_roothash == report.roothash and report.cmdline_owner == OWNER
    assert report.enabled_units["conclave-node.service"] == "multi-user.target.wants"
    assert report.masked_units == ["getty.target"]
    assert report.variant == "recipe-check"
    assert report.uki_sha256 == hashlib.sha256(next(out.glob("*.efi")).read_bytes()).hexdigest()


def test_cli_reports_json_and_exit_code(tmp_path):
    out = build_image(tmp_path)
    ok = subprocess.run([sys.executable, str(CVM / "inspect_image.py"), str(out), "--owner", OWNER],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert '"ok": true' in ok.stdout
    wrong = subprocess.run([sys.executable, str(CVM / "inspect_image.py"), str(out),
                            "--owner", "ab" * 32], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 1 and "cmdline_owner_mismatch" in wrong.stdout


def test_tampered_root_fails_verity_and_partition_match(tmp_path):
    out = build_image(tmp_path)
    root = next(out.glob("*.root.raw"))
    data = bytearray(root.read_bytes())
    data[len(data) // 2] ^= 0x01
    root.write_bytes(bytes(data))
    found = ii.problems(ii.inspect(out), OWNER)
    assert "verity_verify_failed" in found and "root_partition_mismatch" in found


@pytest.mark.parametrize("cmdline_roothash", [None, "0" * 64])
def test_uki_without_the_images_roothash_is_reported(tmp_path, cmdline_roothash):
    out = build_image(tmp_path, cmdline_roothash=cmdline_roothash)
    assert ii.problems(ii.inspect(out), OWNER) == ["cmdline_roothash_mismatch"]


def test_missing_owner_is_reported(tmp_path):
    out = build_image(tmp_path, owner="")
    assert ii.problems(ii.inspect(out)) == ["cmdline_owner_mismatch"]


def test_another_service_sshd_and_root_password_are_reported(tmp_path):
    out = build_image(tmp_path, extra_unit="ssh.service", sshd=True, root_pw="$6$salt$hash")
    found = ii.problems(ii.inspect(out), OWNER)
    assert found == ["extra_enabled_units:ssh.service", "sshd_present", "root_password_set"]


def test_a_masked_unit_is_not_an_enabled_service(tmp_path):
    """networkd's Also= leaves a wants link to wait-online, which the recipe masks: never starts."""
    out = build_image(tmp_path, extra_unit="systemd-networkd-wait-online.service",
                      mask_extra=True)
    report = ii.inspect(out)
    assert ii.problems(report, OWNER) == []
    assert "systemd-networkd-wait-online.service" in report.masked_units
    assert "systemd-networkd-wait-online.service" not in report.enabled_units


def test_a_second_boot_entry_on_the_esp_is_reported(tmp_path):
    """kernel-install's Type #1 entry boots the kernel without roothash=: root without verity."""
    mid = "3bfe8edaf3c344eb94a652c8d8be3b44"
    out = build_image(tmp_path, esp_extra={
        f"loader/entries/{mid}-6.1.0-amd64.conf": b"options console=ttyS0\n",
        f"{mid}/6.1.0-amd64/linux": b"MZ-kernel"})
    report = ii.inspect(out)
    assert ii.problems(report, OWNER) == [
        f"esp_unexpected_files:{mid}/6.1.0-amd64/linux,loader/entries/{mid}-6.1.0-amd64.conf"]
    assert report.esp_uki_matches


def test_an_esp_uki_other_than_the_built_one_is_reported(tmp_path):
    out = build_image(tmp_path)
    uki = next(out.glob("*.efi"))
    uki.write_bytes(uki.read_bytes() + b"\0")  # the split UKI no longer equals the ESP's
    assert ii.problems(ii.inspect(out), OWNER) == ["esp_uki_mismatch"]


def test_missing_verity_partition_is_reported(tmp_path):
    out = build_image(tmp_path)
    disk = next(p for p in out.glob("*.raw") if not p.name.endswith(".root.raw"))
    _run("sfdisk", "--quiet", "--delete", str(disk), "3")
    found = ii.problems(ii.inspect(out), OWNER)
    assert "no_verity_partition" in found and "verity_partition_mismatch" in found


def test_pe_reader_agrees_with_objdump(tmp_path):
    uki = tmp_path / "uki.efi"
    _uki(uki, "roothash=" + "ab" * 32, tmp_path)
    sections = ii.pe_sections(uki.read_bytes())
    dumped = _run("objdump", "-h", str(uki)).stdout
    for name in (".osrel", ".cmdline", ".linux", ".initrd"):
        m = re.search(rf"^\s*\d+\s+{re.escape(name)}\s+([0-9a-f]+)\s+\S+\s+\S+\s+([0-9a-f]+)",
                      dumped, re.M)
        size, offset = int(m.group(1), 16), int(m.group(2), 16)
        assert sections[name] == uki.read_bytes()[offset:offset + size]
    assert sections[".cmdline"] == ("roothash=" + "ab" * 32).encode()
    extracted = ii.extract_boot_parts(uki, tmp_path)
    assert extracted["kernel"].read_bytes() == b"MZ-kernel" * 100
    with pytest.raises(ii.InspectError):
        ii.pe_sections(b"not a PE file")


# --- mkosi.postinst: the wheelhouse guards run before anything is installed --------------

def _fake_bin(tmp_path: Path) -> dict[str, str]:
    """python3 and systemctl that fail loudly: reaching them means the guard let it through."""
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    for tool in ("python3", "systemctl"):
        (fake / tool).write_text(f"#!/bin/sh\necho REACHED-{tool} >&2\nexit 99\n")
        (fake / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{fake}:/usr/bin:/bin"}


def _postinst(tmp_path, variant: str | None, wheelhouse: Path) -> subprocess.CompletedProcess:
    env = _fake_bin(tmp_path)
    env["CONCLAVE_WHEELHOUSE_DIR"] = str(wheelhouse)
    env.pop("CONCLAVE_IMAGE_VARIANT", None)
    if variant is not None:
        env["CONCLAVE_IMAGE_VARIANT"] = variant
    return subprocess.run(["bash", str(CVM / "mkosi.postinst"), "final"], env=env,
                          capture_output=True, text=True, timeout=30)


def test_postinst_refuses_unknown_variant(tmp_path):
    result = _postinst(tmp_path, "gpu-but-unpinned", tmp_path)
    assert result.returncode == 1 and "refusing" in result.stderr
    assert "REACHED" not in result.stderr


def test_postinst_production_refuses_without_wheelhouse_or_hashes(tmp_path):
    missing = _postinst(tmp_path, None, tmp_path / "absent")  # default variant: production
    assert missing.returncode == 1 and "no wheelhouse" in missing.stderr
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    shutil.copy(ROOT / "images/gpu/requirements.lock", wheels / "requirements.lock")  # shipped empty
    (wheels / "conclave.lock").write_text("conclave==0.1.0 --hash=sha256:" + "a" * 64 + "\n")
    unpinned = _postinst(tmp_path, "production", wheels)
    assert unpinned.returncode == 1 and "has no hashes" in unpinned.stderr
    assert "REACHED" not in unpinned.stderr


def test_postinst_recipe_check_proceeds_to_the_venv_with_a_hashed_lock(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "conclave.lock").write_text("conclave==0.1.0 --hash=sha256:" + "a" * 64 + "\n")
    result = _postinst(tmp_path, "recipe-check", wheels)
    assert result.returncode == 99 and "REACHED-python3" in result.stderr


# --- build-local.sh: refusals before mkosi runs --------------------------------------------

def _build_local(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(["bash", str(CVM / "build-local.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.image  # runs images/cvm/build-local.sh (root, loop devices, mkosi)
def test_build_local_refuses_bad_owner_and_repo_outdir(tmp_path, require_root):
    bad = _build_local(str(tmp_path / "o"), "NOT-HEX")
    assert bad.returncode == 1 and "OWNER_FINGERPRINT" in bad.stderr
    inside = _build_local(str(ROOT / "images" / "cvm" / "mkosi.output"), OWNER)
    assert inside.returncode == 1 and "outside the repository" in inside.stderr
    assert not (ROOT / "images" / "cvm" / "mkosi.output").exists()


@pytest.mark.image  # runs images/cvm/build-local.sh (root, loop devices, mkosi)
def test_build_local_production_refuses_unpinned_lock(tmp_path, require_root):
    result = _build_local(str(tmp_path / "o"), OWNER,
                          env_extra={"CONCLAVE_IMAGE_VARIANT": "production"})
    assert result.returncode == 1 and "refusing" in result.stderr and "has no hashes" in result.stderr


# --- the real build: mkosi 14 builds the recipe-check image, and it passes every check ------

BUILD_TIMEOUT_S = 20 * 60   # measured 5-6 min on 2 busy cores (images/README.md)


def _detach_loops_under(folder: Path) -> None:
    """Loop devices whose backing file lies in `folder` (left by a build that was killed)."""
    listing = subprocess.run(["losetup", "--list", "--noheadings", "--output",
                              "NAME,BACK-FILE"], capture_output=True, text=True, timeout=30)
    for line in listing.stdout.splitlines():
        name, _, backing = line.strip().partition(" ")
        if backing.strip().startswith(str(folder)):
            subprocess.run(["losetup", "--detach", name], capture_output=True, timeout=30)


def _build_bounded(out: Path) -> None:
    """build-local.sh in its own process group: on timeout the whole group goes, then any
    loop device mkosi had attached, so a failed run leaves nothing behind."""
    import signal
    proc = subprocess.Popen(["bash", str(CVM / "build-local.sh"), str(out), OWNER],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        _detach_loops_under(out)
        pytest.fail(f"build-local.sh ran past {BUILD_TIMEOUT_S} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _detach_loops_under(out)
    assert proc.returncode == 0, stderr[-4000:]


@pytest.mark.image  # runs images/cvm/build-local.sh (root, loop devices, mkosi)
def test_mkosi_builds_the_recipe_check_image(require_root):
    """The whole recipe, built for real: GPT with squashfs root + verity, UKI carrying the
    image's roothash= and conclave.owner=, the agent as the only service; then the SEV-SNP
    tooling runs on the UKI's parts. Needs mkosi, a Debian mirror, loop devices, and mtools on
    kernels without vfat (images/local/install.sh installs them)."""
    import json
    import tempfile
    assert shutil.which("mkosi"), "mkosi not installed: apt-get install mkosi"
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="conclave-cvm-test-") as tmp:
        out = Path(tmp)
        _build_bounded(out)
        checked = json.loads((out / "inspect.json").read_text())
        assert checked["ok"] and checked["problems"] == []
        report = checked["report"]
        assert report["verity_ok"] and report["cmdline_roothash"] == report["roothash"]
        assert report["cmdline_owner"] == OWNER and report["variant"] == "recipe-check"
        assert {u for u in report["enabled_units"] if not u.startswith(("systemd-", "dbus-org"))} \
            == {"conclave-node.service"}
        # Our own inspection, independent of inspect.json: verity over the split artefacts.
        image_dir = next(out.glob("out/*/"))
        root = next(image_dir.glob("*.root.raw"))
        roothash = next(image_dir.glob("*.roothash")).read_text().strip()
        assert ii.verity_verify(root, next(image_dir.glob("*.root.verity")), roothash)
        cmdline = (out / "measure-inputs" / "uki.cmdline").read_text()
        assert f"roothash={roothash}" in cmdline.split()
        assert f"conclave.owner={OWNER}" in cmdline.split()
        # Debian's OVMF is not an AmdSev build: measured direct boot of the UKI's kernel must be
        # refused (exit 5, firmware_malformed), never answered with a made-up digest.
        measure = subprocess.run(
            [sys.executable, "-c", "import sys; from conclave.runtime.cli import main; sys.exit(main())",
             "measure", "snp", "--json",
             "--ovmf", "/usr/share/ovmf/OVMF.fd", "--vcpus", "2", "--vcpu-type", "EPYC-Milan",
             "--kernel", str(out / "measure-inputs" / "uki.linux"),
             "--initrd", str(out / "measure-inputs" / "uki.initrd"), "--append", cmdline],
            capture_output=True, text=True, timeout=120)
        assert measure.returncode == 5
        assert json.loads(measure.stdout)["reason"] == "firmware_malformed"


def test_verity_shim_derives_salt_and_uuid_from_the_data(tmp_path):
    """mkosi 14's `veritysetup format` uses a random salt: same root, new root hash each build.
    The repro shim makes the hash a function of the data (and still verifiable)."""
    shim = CVM / "repro-shim" / "veritysetup"
    data = tmp_path / "root.raw"
    data.write_bytes(os.urandom(1 << 20))

    def fmt(tool: Path | str, out: str) -> dict[str, str]:
        text = _run(str(tool), "format", str(data), str(tmp_path / out)).stdout
        return {k.strip(): v.strip() for k, _, v in
                (line.partition(":") for line in text.splitlines()) if v}

    first, second = fmt(shim, "h1"), fmt(shim, "h2")
    assert first["Root hash"] == second["Root hash"] and first["UUID"] == second["UUID"]
    assert first["Salt"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert ii.verity_verify(data, tmp_path / "h1", first["Root hash"])
    real_a, real_b = fmt("veritysetup", "h3"), fmt("veritysetup", "h4")
    assert real_a["Root hash"] != real_b["Root hash"]  # the default this shim exists for
    data.write_bytes(os.urandom(1 << 20))
    assert fmt(shim, "h5")["Salt"] != first["Salt"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"conclave_{name}", CVM / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_pe_timestamp_pins_the_uki_and_keeps_a_valid_checksum(tmp_path):
    """objcopy stamps the build time into the UKI; pinning makes two builds byte-identical."""
    pe = _load("pe_timestamp")
    first, second = tmp_path / "a.efi", tmp_path / "b.efi"
    _uki(first, "roothash=" + "ab" * 32, tmp_path)
    data = first.read_bytes()
    stamp_at, checksum_at = pe.offsets(data)
    # our checksum equals the one objcopy wrote, on objcopy's own output
    assert pe.pe_checksum(data, checksum_at) == int.from_bytes(data[checksum_at:checksum_at + 4],
                                                                "little")
    second.write_bytes(data[:stamp_at] + b"\x01\x02\x03\x04" + data[stamp_at + 4:])  # other time
    assert first.read_bytes() != second.read_bytes()
    for path in (first, second):
        pe.pin(path, 1_700_000_000)
    assert first.read_bytes() == second.read_bytes()
    dumped = _run("objdump", "-p", str(first)).stdout
    checksum = re.search(r"CheckSum\s+([0-9a-f]+)", dumped).group(1)
    pinned = first.read_bytes()
    assert int(checksum, 16) == pe.pe_checksum(pinned, checksum_at)
    assert int.from_bytes(pinned[stamp_at:stamp_at + 4], "little") == 1_700_000_000
    assert ii.pe_sections(pinned)[".cmdline"] == ("roothash=" + "ab" * 32).encode()
