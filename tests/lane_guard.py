"""Keeps the fast lane honest: a test that starts a cluster, touches network namespaces or builds
the CVM image must carry the marker that keeps it out of `-m "not cluster and not netns and not image"`.

tests/conftest.py installs `guard_popen` for the whole session. Every process a test starts goes
through subprocess.Popen (subprocess.run and asyncio's subprocesses included); when the command
needs a lane marker the running test lacks, Popen raises UnmarkedLaneError before anything starts,
so the test fails at once instead of quietly running a cluster in the fast lane.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence

LANE_MARKERS = ("cluster", "netns", "image")

# `ip OBJECT COMMAND` commands that only read state; any other command (add, del, set, exec,
# replace, ...) changes the host's network or enters a namespace: root and the netns marker
_IP_READ_ONLY = {"show", "list", "pids", "identify", "get", "monitor", "help"}
_WG_WRITES = {"set", "setconf", "addconf", "syncconf"}  # `wg genkey`/`pubkey` are pure key tools
_NAMESPACE_TOOLS = {"unshare", "nsenter", "wireguard-go", "wg-quick", "nft", "tcpdump"}
_MKOSI_READ_ONLY = {"summary", "help", "--help", "--version", "-h"}
_VLLM_ENTRIES = {"vllm.entrypoints.openai.api_server", "vllm.entrypoints.cli.main"}
# where the real system tools live; a stand-in script a test puts first on PATH (a fake `wg` that
# logs its arguments) resolves elsewhere and needs no marker
_SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/")


class UnmarkedLaneError(RuntimeError):
    """A test started a process that needs a lane marker it does not carry."""


def _argv(args) -> list[str]:
    if isinstance(args, (str, bytes, os.PathLike)):
        text = os.fsdecode(args)
        try:
            return shlex.split(text)
        except ValueError:
            return text.split()
    return [os.fsdecode(a) for a in args]


def needed_markers(args, env: Mapping[str, str] | None = None) -> set[str]:
    """The lane markers a command needs: 'netns', 'cluster' and/or 'image' (empty for the rest).
    `env` is the environment the command gets (its PATH decides which `ip`/`wg`/`mkosi` runs)."""
    argv = _argv(args)
    if not argv:
        return set()
    names = [os.path.basename(a) for a in argv]
    if names[0] == "sudo":
        return needed_markers(argv[1:], env)
    needed: set[str] = set()
    system = _system_tool(argv[0], env)
    if names[0] == "ip" and system:
        needed |= _ip_markers(argv[1:], env)
    if system and (names[0] in _NAMESPACE_TOOLS or (names[0] == "wg" and argv[1:2] and argv[1] in _WG_WRITES)):
        needed.add("netns")
    if _starts_conclave_cluster(argv, names) or _starts_ray_or_vllm(argv, names):
        needed.add("cluster")
    if (names[0] == "mkosi" and system and not _MKOSI_READ_ONLY.intersection(argv[1:2])) or "build-local.sh" in names:
        needed.add("image")
    return needed


def _system_tool(program: str, env: Mapping[str, str] | None) -> bool:
    """True unless `program` resolves to a stand-in outside the system folders (an unresolved name
    counts as the real tool: the check fails closed)."""
    path = program if "/" in program else shutil.which(program, path=(env if env is not None else os.environ).get("PATH"))
    return path is None or os.path.realpath(path).startswith(_SYSTEM_DIRS)


def _ip_markers(args: Sequence[str], env: Mapping[str, str] | None) -> set[str]:
    if "-n" in args or "-netns" in args:  # `ip -n NS OBJECT COMMAND` runs inside a namespace
        return {"netns"}
    words = [a for a in args if not a.startswith("-")]
    if len(words) >= 2 and words[:2] == ["netns", "exec"]:
        inner = list(args)[list(args).index("exec") + 2:]
        return {"netns"} | needed_markers(inner, env)  # and whatever runs inside
    if len(words) >= 2 and words[1] not in _IP_READ_ONLY:
        return {"netns"}
    return set()


def _starts_conclave_cluster(argv: Sequence[str], names: Sequence[str]) -> bool:
    """`conclave up` (the console script or `python -m conclave.runtime.cli up`), unless it only asks for help."""
    if "--help" in argv or "-h" in argv:
        return False
    for i, name in enumerate(names):
        if name == "conclave" or argv[i] == "conclave.runtime.cli":
            return argv[i + 1:i + 2] == ["up"]
    return False


def _starts_ray_or_vllm(argv: Sequence[str], names: Sequence[str]) -> bool:
    return names[:2] == ["ray", "start"] or names[:2] == ["vllm", "serve"] or bool(_VLLM_ENTRIES.intersection(argv))


def guard_popen(current_markers: Callable[[], set[str] | None]) -> Callable[[], None]:
    """Wrap subprocess.Popen so that it refuses a command needing a marker the running test lacks.

    `current_markers` returns the running test's lane markers, or None outside a test (collection,
    session teardown), where nothing is refused. Returns the function that undoes the wrap."""
    original_init = subprocess.Popen.__init__

    def checked_init(self, args, *a, **kw):
        markers = current_markers()
        if markers is not None:
            missing = needed_markers(args, kw.get("env")) - markers
            if missing:
                raise UnmarkedLaneError(
                    f"this test starts {_argv(args)[:3]} but is not marked {', '.join(sorted(missing))}: "
                    f"add pytestmark = [pytest.mark.{', pytest.mark.'.join(sorted(missing))}] (see tests/lane_guard.py)")
        original_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = checked_init

    def undo() -> None:
        subprocess.Popen.__init__ = original_init

    return undo
