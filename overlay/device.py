"""WireGuard device drivers: observed state types, the Device seam, a fake, and `wg`.

ObservedDevice/ObservedPeer are what the device reports (handshakes, counters, a PSK
fingerprint, never the PSK or private key); they are deliberately a different type from the
desired config. `WgDevice` drives kernel WireGuard when the module exists and wireguard-go
otherwise, always through `wg` (wireguard-tools). Secrets go to `wg` through a pipe read as
/dev/fd/N: never argv, never a file.

Devices that can die (a wireguard-go process killed or crashed, an interface deleted) offer
`check()` (why it is dead, or None) and `recreate()` (same key, port and address); the
reconciler heals them on its next step.

With `netns` (a serving node's inner namespace, runtime/node/inner_netns.py) the device is
created here, so its UDP socket stays in this namespace on the underlay, and then moved into
`netns`, where its address, MTU and link state are set: the overlay address and routes exist only
there. wireguard-go keeps serving a moved TUN device, and its UAPI socket is a file
(/var/run/wireguard/IF.sock), so `wg` runs here; kernel WireGuard is driven by netlink in the
namespace that holds the interface, so `wg` runs inside `netns` (`ip netns exec`).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from conclave.overlay.keys import PresharedKey, WgPrivateKey, WgPublicKey, psk_fingerprint_of_b64
from conclave.overlay.reasons import DeviceReason
from conclave.runtime.errors import ConclaveError

log = logging.getLogger("conclave.overlay.device")
WG_RUN_DIR = Path("/var/run/wireguard")


@dataclass(frozen=True)
class ObservedPeer:
    public_key: WgPublicKey
    allowed_ips: tuple[str, ...]
    endpoint: str | None
    psk_fingerprint: str | None
    keepalive: int
    latest_handshake: float | None   # unix seconds, None = never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class ObservedDevice:
    interface: str
    listen_port: int
    peers: dict = field(default_factory=dict)  # WgPublicKey -> ObservedPeer


@dataclass(frozen=True)
class PeerSpec:
    """One peer to set (add or update) on the device."""

    public_key: WgPublicKey
    allowed_ips: tuple[str, ...]
    endpoint: str
    psk: PresharedKey
    keepalive: int


class Device(Protocol):
    interface: str

    def read(self) -> ObservedDevice: ...
    def set_peer(self, spec: PeerSpec) -> None: ...
    def remove_peer(self, public_key: WgPublicKey) -> None: ...
    def set_listen_port(self, port: int) -> None: ...


class FakeDevice:
    """In-memory device for unit tests: records every operation, reports like `wg show`."""

    def __init__(self, interface: str = "fake0", listen_port: int = 0):
        self.interface = interface
        self.listen_port = listen_port
        self._initial_port = listen_port
        self.peers: dict[WgPublicKey, ObservedPeer] = {}
        self.ops: list[tuple[str, str]] = []
        self.dead: DeviceReason | None = None
        self.recreations = 0

    def kill(self, why: DeviceReason = DeviceReason.DAEMON_EXITED) -> None:
        """Tests: the daemon dies; its peers and sessions are gone with it."""
        self.dead = why
        self.peers = {}
        self.ops.append(("killed", str(why)))

    def check(self) -> DeviceReason | None:
        return self.dead

    def recreate(self) -> None:
        self.dead = None
        self.peers = {}
        self.listen_port = self._initial_port
        self.recreations += 1
        self.ops.append(("recreate", self.interface))

    def read(self) -> ObservedDevice:
        return ObservedDevice(self.interface, self.listen_port, dict(self.peers))

    def set_peer(self, spec: PeerSpec) -> None:
        old = self.peers.get(spec.public_key)
        self.peers[spec.public_key] = ObservedPeer(
            public_key=spec.public_key, allowed_ips=tuple(spec.allowed_ips), endpoint=spec.endpoint,
            psk_fingerprint=spec.psk.fingerprint(), keepalive=spec.keepalive,
            latest_handshake=old.latest_handshake if old else None,
            rx_bytes=old.rx_bytes if old else 0, tx_bytes=old.tx_bytes if old else 0)
        self.ops.append(("set", spec.public_key.to_base64()))

    def remove_peer(self, public_key: WgPublicKey) -> None:
        self.peers.pop(public_key, None)
        self.ops.append(("remove", public_key.to_base64()))

    def set_listen_port(self, port: int) -> None:
        self.listen_port = port
        self.ops.append(("listen_port", str(port)))


def scrub_wg_stderr(stderr: str, secret: bytes | None) -> str:
    """wg quotes a key it cannot parse (`Key is not the correct length or format: `KEY'`): drop
    every quoted value, and the secret itself, before the text can reach an exception or a log."""
    text = re.sub(r"`[^']*'", "`<redacted>'", stderr.strip())
    if secret:
        token = secret.decode("ascii", "replace").strip()
        if token:
            text = text.replace(token, "<redacted>")
    return text


def _wg(args: list[str], *, secret: bytes | None = None, timeout: float = 10, prefix: list[str] = ()) -> str:
    """Run `wg ARGS` (after `prefix`, e.g. `ip netns exec NS`); `secret` (if any) is readable by wg as
    /dev/fd/N, substituted for '{fd}'."""
    if secret is None:
        res = subprocess.run([*prefix, "wg", *args], capture_output=True, text=True, timeout=timeout)
    else:
        r, w = os.pipe()
        try:
            os.write(w, secret)  # < pipe buffer; wg reads it after we close the write end
            os.close(w)
            w = -1
            res = subprocess.run([*prefix, "wg", *[a.replace("{fd}", f"/dev/fd/{r}") for a in args]],
                                 capture_output=True, text=True, timeout=timeout, pass_fds=(r,))
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    if res.returncode != 0:
        raise ConclaveError("wg_failed", f"wg {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                                         f"{scrub_wg_stderr(res.stderr, secret)[:300]}")
    return res.stdout


def kernel_wireguard_available(probe_name: str = "cncprobe0") -> bool:
    res = subprocess.run(["ip", "link", "add", probe_name, "type", "wireguard"], capture_output=True)
    if res.returncode == 0:
        subprocess.run(["ip", "link", "del", probe_name], capture_output=True)
        return True
    return False


def bring_up_commands(interface: str, *, listen_port: int, address: ipaddress.IPv4Address,
                      overlay: ipaddress.IPv4Network, netns: str | None) -> list[tuple[list[str], bool]]:
    """The commands that configure a freshly created device, in order: (argv, takes the private key).
    Key and port are set where the device was created (its UDP socket's namespace); with `netns`
    the device then moves there and is addressed and brought up inside it."""
    key = (["wg", "set", interface, "private-key", "{fd}", "listen-port", str(listen_port)], True)
    cidr = f"{address}/{overlay.prefixlen}"
    if not netns:
        return [key, (["ip", "addr", "replace", cidr, "dev", interface], False),
                (["ip", "link", "set", interface, "mtu", "1420", "up"], False)]
    return [key, (["ip", "link", "set", "dev", interface, "netns", netns], False),
            (["ip", "-n", netns, "addr", "replace", cidr, "dev", interface], False),
            (["ip", "-n", netns, "link", "set", interface, "mtu", "1420", "up"], False)]


class WgDevice:
    """A real WireGuard interface in the current network namespace, driven through `wg`."""

    def __init__(self, interface: str, *, private_key: WgPrivateKey, listen_port: int,
                 address: ipaddress.IPv4Address, overlay: ipaddress.IPv4Network,
                 implementation: str = "auto", netns: str | None = None):
        if len(interface) > 15:
            raise ValueError("interface names are at most 15 characters")
        self.interface = interface
        self._proc: subprocess.Popen | None = None
        self._wanted = implementation
        self.implementation = implementation
        # kept (in memory only) to recreate the same device if its daemon dies
        self._private_key = private_key
        self._listen_port = listen_port
        self._address = address
        self._overlay = overlay
        self.netns = netns
        self._moved = False
        if shutil.which("wg") is None:
            raise ConclaveError("no_wireguard_tools", "`wg` (wireguard-tools) is not installed")
        self._bring_up()

    def _bring_up(self) -> None:
        self.implementation = self._wanted
        self._create()
        try:
            for args, secret in bring_up_commands(self.interface, listen_port=self._listen_port,
                                                  address=self._address, overlay=self._overlay,
                                                  netns=self.netns):
                if args[0] == "wg":
                    _wg(args[1:], secret=self._private_key.wg_text() if secret else None, prefix=self._wg_prefix())
                else:
                    self._ip(args[1:])
                    if args[1:3] == ["link", "set"] and "netns" in args:
                        self._moved = True
        except Exception:
            self.close()
            raise

    def _wg_prefix(self) -> list[str]:
        """Kernel WireGuard moved into another namespace answers netlink only there."""
        if self.netns and self.implementation == "kernel" and self._moved:
            return ["ip", "netns", "exec", self.netns]
        return []

    @property
    def pid(self) -> int | None:
        """wireguard-go's PID (our child), None for kernel WireGuard."""
        return self._proc.pid if self._proc is not None else None

    def check(self) -> DeviceReason | None:
        """Why this device no longer works (None: it does). Cheap: no subprocess, except one `ip -n`
        for a device in another namespace."""
        if self._proc is not None and self._proc.poll() is not None:
            return DeviceReason.DAEMON_EXITED
        if self.implementation == "wireguard-go" and not (WG_RUN_DIR / f"{self.interface}.sock").exists():
            return DeviceReason.SOCKET_MISSING
        if self.netns:
            res = subprocess.run(["ip", "-n", self.netns, "-o", "link", "show", "dev", self.interface],
                                 capture_output=True, timeout=10)
            return DeviceReason.INTERFACE_MISSING if res.returncode != 0 else None
        try:
            socket.if_nametoindex(self.interface)
        except OSError:
            return DeviceReason.INTERFACE_MISSING
        return None

    def recreate(self) -> None:
        """Tear down what is left (our process by PID, the interface, a stale UAPI socket) and
        bring the device up again with the same private key, listen port and address; peers are
        re-applied by the reconciler."""
        self.close()
        self._bring_up()

    @staticmethod
    def _ip(args: list[str]) -> None:
        res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            raise ConclaveError("ip_failed", f"ip {' '.join(args)}: {res.stderr.strip()}")

    def _create(self) -> None:
        self._moved = False
        impl = self.implementation
        if impl in ("auto", "kernel"):
            res = subprocess.run(["ip", "link", "add", self.interface, "type", "wireguard"],
                                 capture_output=True, text=True)
            if res.returncode == 0:
                self.implementation = "kernel"
                return
            if impl == "kernel":
                raise ConclaveError("no_kernel_wireguard", res.stderr.strip())
        if shutil.which("wireguard-go") is None:
            raise ConclaveError("no_wireguard", "neither kernel WireGuard nor wireguard-go is available")
        sock = WG_RUN_DIR / f"{self.interface}.sock"
        if sock.exists():
            raise ConclaveError("interface_in_use", f"{sock} exists: another node uses interface "
                                                    f"{self.interface} (names must be unique per host)")
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LOG_LEVEL": "error"}
        # -f: stay in the foreground so we own the process and can stop it by PID.
        self._proc = subprocess.Popen(["wireguard-go", "-f", self.interface], env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        self.implementation = "wireguard-go"
        deadline = time.monotonic() + 10
        while not sock.exists():
            if self._proc.poll() is not None:
                raise ConclaveError("wireguard_go_failed", f"wireguard-go exited {self._proc.returncode}")
            if time.monotonic() > deadline:
                self.close()
                raise ConclaveError("wireguard_go_failed", "wireguard-go did not create its socket")
            time.sleep(0.02)

    def read(self) -> ObservedDevice:
        out = _wg(["show", self.interface, "dump"], prefix=self._wg_prefix())
        lines = out.splitlines()
        if not lines:
            raise ConclaveError("wg_failed", "empty wg dump")
        first = lines[0].split("\t")
        # first line: private-key public-key listen-port fwmark; the private key is dropped here.
        listen_port = int(first[2])
        del first
        peers: dict[WgPublicKey, ObservedPeer] = {}
        for line in lines[1:]:
            f = line.split("\t")
            if len(f) < 8:
                continue
            pub = WgPublicKey.from_base64(f[0])
            hs = int(f[4])
            peers[pub] = ObservedPeer(
                public_key=pub, psk_fingerprint=psk_fingerprint_of_b64(f[1]),
                endpoint=None if f[2] == "(none)" else f[2],
                allowed_ips=tuple(sorted(x for x in f[3].split(",") if x and x != "(none)")),
                latest_handshake=float(hs) if hs else None, rx_bytes=int(f[5]), tx_bytes=int(f[6]),
                keepalive=0 if f[7] == "off" else int(f[7]))
        return ObservedDevice(self.interface, listen_port, peers)

    def set_peer(self, spec: PeerSpec) -> None:
        # `wg set ... allowed-ips` replaces the peer's list, so a stale range never lingers.
        _wg(["set", self.interface, "peer", spec.public_key.to_base64(), "preshared-key", "{fd}",
             "endpoint", spec.endpoint, "persistent-keepalive", str(spec.keepalive),
             "allowed-ips", ",".join(spec.allowed_ips)],
            secret=spec.psk.wg_text(), prefix=self._wg_prefix())

    def remove_peer(self, public_key: WgPublicKey) -> None:
        _wg(["set", self.interface, "peer", public_key.to_base64(), "remove"], prefix=self._wg_prefix())

    def set_listen_port(self, port: int) -> None:
        _wg(["set", self.interface, "listen-port", str(port)], prefix=self._wg_prefix())

    def close(self) -> None:
        """Delete the interface and stop wireguard-go (our own child, by PID)."""
        if self.netns:
            subprocess.run(["ip", "-n", self.netns, "link", "del", self.interface], capture_output=True)
        subprocess.run(["ip", "link", "del", self.interface], capture_output=True)
        self._moved = False
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        sock = WG_RUN_DIR / f"{self.interface}.sock"
        try:
            sock.unlink()
        except FileNotFoundError:
            pass
