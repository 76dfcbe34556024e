"""SEV-SNP expected launch measurement through the `sev-snp-measure` package (IBM, Apache-2.0).

Why a wrapper: the package does the work (OVMF SEV metadata, kernel/initrd/cmdline hash
table, VMSA pages per vCPU); this module pins the inputs Conclave uses, turns its failures
into reason codes, and keeps the CLI and the policy fragment independent of its API.

The digest depends on: the OVMF binary (an AmdSev build with SEV metadata), the kernel,
initrd and command line when booted with measured direct boot (`kernel-hashes=on`), the vCPU
count and CPU signature (family/model/stepping of the vCPU type), the VMM (QEMU, EC2, GCE
differ in VMSA and CPUID page handling), and the guest features (SEV_FEATURES, default 0x1 =
SNPActive as in the package's CLI).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conclave.runtime.errors import ConclaveError, ExitCode

VMM_TYPES = ("qemu", "ec2", "gce")
DEFAULT_GUEST_FEATURES = 0x1


@dataclass(frozen=True)
class SnpInputs:
    ovmf: Path
    vcpus: int
    vcpu_type: str | None = None          # e.g. "EPYC-Milan", "EPYC-Genoa"
    vcpu_sig: int | None = None           # or an explicit CPUID signature
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    vmm: str = "qemu"
    guest_features: int = DEFAULT_GUEST_FEATURES


def _imports():
    try:
        from sevsnpmeasure import guest, vcpu_types, vmm_types
    except ImportError as exc:  # a missing dependency must fail, not degrade
        raise ConclaveError("dependency_missing",
                            "sev-snp-measure is not installed (pip install sev-snp-measure)") from exc
    return guest, vcpu_types, vmm_types


def vcpu_types() -> tuple[str, ...]:
    return tuple(sorted(_imports()[1].CPU_SIGS))


def _signature(inputs: SnpInputs) -> int:
    if (inputs.vcpu_type is None) == (inputs.vcpu_sig is None):
        raise ConclaveError("usage", "give exactly one of a vCPU type or a vCPU signature",
                            exit_code=ExitCode.USAGE)
    if inputs.vcpu_sig is not None:
        return inputs.vcpu_sig
    sigs = _imports()[1].CPU_SIGS
    if inputs.vcpu_type not in sigs:
        raise ConclaveError("usage", f"unknown vCPU type {inputs.vcpu_type!r}; known: "
                            + ", ".join(sorted(sigs)), exit_code=ExitCode.USAGE)
    return sigs[inputs.vcpu_type]


def launch_digest(inputs: SnpInputs) -> bytes:
    """The 48-byte MEASUREMENT an SNP report of this guest must carry."""
    guest, _, vmm_types = _imports()
    if inputs.vcpus < 1:
        raise ConclaveError("usage", "vcpus must be at least 1", exit_code=ExitCode.USAGE)
    if inputs.vmm not in VMM_TYPES:
        raise ConclaveError("usage", f"vmm must be one of {VMM_TYPES}", exit_code=ExitCode.USAGE)
    if (inputs.initrd or inputs.append) and not inputs.kernel:
        raise ConclaveError("usage", "initrd/append need a kernel (measured direct boot)",
                            exit_code=ExitCode.USAGE)
    vmm = {"qemu": vmm_types.VMMType.QEMU, "ec2": vmm_types.VMMType.ec2,
           "gce": vmm_types.VMMType.gce}[inputs.vmm]
    for path in (inputs.ovmf, inputs.kernel, inputs.initrd):
        if path is not None and not Path(path).is_file():
            raise ConclaveError("usage", f"no such file: {path}", exit_code=ExitCode.USAGE)
    try:
        digest = guest.snp_calc_launch_digest(
            inputs.vcpus, _signature(inputs), str(inputs.ovmf),
            str(inputs.kernel) if inputs.kernel else None,
            str(inputs.initrd) if inputs.initrd else None,
            inputs.append or "", inputs.guest_features, "", vmm_type=vmm)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ConclaveError("firmware_malformed",
                            f"cannot compute the SNP launch digest: {exc}",
                            exit_code=ExitCode.MALFORMED) from exc
    if len(digest) != 48:
        raise ConclaveError("firmware_malformed", "SNP launch digest is not 48 bytes",
                            exit_code=ExitCode.MALFORMED)
    return digest
