"""images/: pins are enforced, the mkosi recipe parses in the real mkosi, units verify."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

IMAGES = Path(__file__).resolve().parents[2] / "images"
GPU = IMAGES / "gpu"
CVM = IMAGES / "cvm"
GOOD_DIGEST = "sha256:" + "0123456789abcdef" * 4
HASHED_LOCK = ("vllm==0.32.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
               "ray[default]==2.60.0 --hash=sha256:" + "b" * 64 + "\n")


def check_pins(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GPU / "check_pins.py"), *args],
                          capture_output=True, text=True, timeout=30)


def test_shipped_pins_are_refused():
    """The repository never carries invented digests: the build must refuse until released."""
    result = check_pins()
    assert result.returncode == 1
    assert "unpinned_base: CUDA_RUNTIME_DIGEST" in result.stderr
    assert "unhashed_requirements" in result.stderr


def _write(tmp_path: Path, digest: str, lock: str) -> list[str]:
    text = (GPU / "digests.lock").read_text()
    text = re.sub(r"(?m)^CUDA_RUNTIME_DIGEST=.*$", f"CUDA_RUNTIME_DIGEST={digest}", text)
    (tmp_path / "digests.lock").write_text(text)
    (tmp_path / "requirements.lock").write_text(lock)
    return ["--digests", str(tmp_path / "digests.lock"),
            "--requirements", str(tmp_path / "requirements.lock")]


def test_well_formed_pins_pass_and_become_build_args(tmp_path):
    result = check_pins(*_write(tmp_path, GOOD_DIGEST, HASHED_LOCK), "--print-build-args")
    assert result.returncode == 0, result.stderr
    assert f"--build-arg=CUDA_RUNTIME_DIGEST={GOOD_DIGEST}" in result.stdout.splitlines()


@pytest.mark.parametrize("digest", ["", "latest", "sha256:abc", "sha256:" + "A" * 64,
                                    "sha512:" + "a" * 64])
def test_bad_digests_are_refused(tmp_path, digest):
    result = check_pins(*_write(tmp_path, digest, HASHED_LOCK))
    assert result.returncode == 1 and "unpinned_base" in result.stderr


def test_one_unhashed_requirement_is_refused(tmp_path):
    lock = HASHED_LOCK + "grpcio==1.70.0\n"
    result = check_pins(*_write(tmp_path, GOOD_DIGEST, lock))
    assert result.returncode == 1 and "unhashed_requirements: grpcio==1.70.0" in result.stderr


def test_containerfile_bases_only_by_digest():
    text = (GPU / "Containerfile").read_text()
    froms = re.findall(r"(?m)^FROM\s+(\S+)", text)
    assert froms and all(re.fullmatch(r"\$\{\w+_IMAGE\}@\$\{\w+_DIGEST\}", f) for f in froms)
    for arg in re.findall(r"\$\{(\w+_DIGEST)\}", " ".join(froms)):
        assert re.search(rf"(?m)^ARG {arg}$", text), f"{arg} must be an ARG without default"
        assert re.search(rf"{arg}.*=~ \^sha256:\[0-9a-f\]\{{64\}}\$", text), "guard step missing"
    assert "wireguard-tools" in text and "--require-hashes" in text
    assert "vllm==" in (GPU / "requirements.in").read_text()


def _mkosi_summary() -> str:
    mkosi = shutil.which("mkosi")
    assert mkosi, "mkosi not installed: apt-get install mkosi"
    result = subprocess.run([mkosi, "summary"], cwd=CVM, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr  # mkosi 14 prints the summary on stderr


def test_mkosi_recipe_parses_with_verity_readonly_uki():
    summary = _mkosi_summary()
    fields = {m.group(1).strip(): m.group(2).strip()
              for m in re.finditer(r"(?m)^[ \t]*([^:\n]+):[ \t]*(.*)$", summary)}
    assert fields["Output Format"] == "gpt_squashfs"
    assert fields["Verity"] == "yes" and fields["Read-only"] == "yes"
    assert fields["Bootable"] == "yes" and fields["Unified Kernel Images"] == "yes"
    assert fields["Distribution"] == "debian"
    assert "lockdown=confidentiality" in fields["Kernel Command Line"]
    assert "openssh-server" not in summary


def test_node_agent_is_the_only_enabled_service():
    wants = CVM / "mkosi.extra" / "etc" / "systemd" / "system" / "multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == ["conclave-node.service"]
    assert (wants / "conclave-node.service").resolve() == \
        (wants.parent / "conclave-node.service").resolve()
    postinst = (CVM / "mkosi.postinst").read_text()
    assert "systemctl enable systemd-networkd.service conclave-node.service" in postinst
    assert "getty" in postinst


def test_units_pass_systemd_analyze(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing (Debian package systemd)"
    units = CVM / "mkosi.extra" / "etc" / "systemd" / "system"
    paths = []
    for unit in ("conclave-node.service", "run-conclavecfg.mount"):
        shutil.copy(units / unit, tmp_path / unit)
        paths.append(str(tmp_path / unit))
    result = subprocess.run([analyze, "verify", "--man=no", *paths], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines()
                if "is not executable" not in line  # the launcher lives in the image only
                and "Unit sysinit.target not found" not in line]
    assert problems == []


def test_launcher_takes_owner_from_measured_cmdline_only():
    launcher = (CVM / "mkosi.extra" / "usr" / "lib" / "conclave" / "conclave-node-launch")
    text = launcher.read_text()
    assert launcher.stat().st_mode & 0o111
    assert "/proc/cmdline" in text and "conclave.owner=" in text
    assert "exec /opt/conclave/venv/bin/conclave node" in text
    result = subprocess.run(["bash", "-n", str(launcher)], capture_output=True, timeout=30)
    assert result.returncode == 0


def test_launcher_node_args_are_accepted_by_the_real_cli():
    """The image's launcher must only pass flags `conclave node` has (the policy comes from the signed
    manifest on the config disk; the owner fingerprint from the measured kernel command line)."""
    import re
    import shlex
    from conclave.runtime.cli import build_parser
    text = (CVM / "mkosi.extra" / "usr" / "lib" / "conclave" / "conclave-node-launch").read_text()
    command = text[text.index("exec /opt/conclave/venv/bin/conclave node"):].split("\n\n")[0]
    command = command.replace("\\\n", " ")
    assert 'front=(--front-port "${CONCLAVE_API_PORT:-8443}")' in text   # the head serves its TLS front
    for role, front in (("worker", []), ("head", ["--front-port", "8443"])):
        values = {"CONCLAVE_ROLE": role, "CONCLAVE_NAME": "gpu-1", "CFG": "/run/conclavecfg",
                  "CONCLAVE_UNDERLAY_HOST": "198.18.0.2", "CONCLAVE_RENDEZVOUS": "198.18.0.1:51822"}
        line = command.replace('"${front[@]}"', " ".join(front))
        argv = shlex.split(re.sub(r'"\$\{?(\w+)\}?([^"]*)"', lambda m: values[m.group(1)] + m.group(2), line))
        assert argv[:2] == ["exec", "/opt/conclave/venv/bin/conclave"]
        argv = argv[2:]
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"the conclave CLI rejects the launcher's args {argv}: exit {exc.code}") from None
        assert str(args.manifest).endswith("/manifest.json")
        assert str(args.model_manifest).endswith("/model-manifest.json")   # the node serves its stage
        assert args.front_port == (8443 if role == "head" else None)
        assert not hasattr(args, "policy") and not hasattr(args, "manifest_digest")
