"""Pipeline hop (issue 18, item 2): ping-pong of pipeline-sized messages between two network
namespaces, over a wireguard-go tunnel (what the overlay uses where the kernel has no WireGuard)
and over the plain veth under it, in one run.

A pipeline stage hands the next one IntermediateTensors {hidden_states, residual} per token:
2 x hidden x 2 bytes (bf16). Sizes: prompts of 1 token (a decode step of one sequence) and 2,048
tokens (a long prefill), for hidden 576 (the default SmolLM2 model), 4096 (8B class) and 8192
(70B class): 2.3 KiB .. 64 MiB.

Set-up (own names, so it cannot clash with the tests' 198.18.x hosts): namespaces h5-hop-a and
h5-hop-b joined by a veth pair on 198.19.7.0/24; in each a wireguard-go device (MTU 1420, as
overlay/device.py sets) with the other as its only peer on 100.127.7.0/24. Torn down in `finally`
(wireguard-go stopped by PID, namespaces deleted with their links).

Per size and path, interleaved (plain, overlay, plain, overlay ... `--repeat` times):
  ping-pong   the client sends a length-prefixed message, the server echoes it whole: round trip
              p50/p99 (one hop ~ half of it);
  throughput  messages back to back, the server acknowledges each with one byte: bytes/s until
              the last acknowledgement (one direction, pipelined).
Ratios overlay/plain; the load (/proc/loadavg) and steal (/proc/stat) before and after. The
scaling model (benchmarks/scaling_model.py) reads the result file: the overlay's encryption cost
per byte from the largest message's throughput pair, its added latency from the 1-token pairs.

Needs root, iproute2, wireguard-go, wireguard-tools. Run it under the netns lock:
    flock /tmp/conclave-netns.lock .venv/bin/python -m benchmarks.hop_bench --out benchmarks/results/hop.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.machine import machine_state, percentile, steal_share

NS_A, NS_B = "h5-hop-a", "h5-hop-b"
VETH_A, VETH_B = "h5-hva", "h5-hvb"
WG_A, WG_B = "h5wga", "h5wgb"
UNDER_A, UNDER_B = "198.19.7.1", "198.19.7.2"
OVER_A, OVER_B = "100.127.7.1", "100.127.7.2"
WG_PORT = 51820
SERVER_PORT = 7100
WG_RUN_DIR = Path("/var/run/wireguard")
HIDDEN = {"smollm2": 576, "8b": 4096, "70b": 8192}
PROMPTS = (1, 2048)


def message_bytes(hidden: int, tokens: int, *, tensors: int = 2, elem: int = 2) -> int:
    """Bytes one stage boundary carries for `tokens` tokens (hidden_states + residual, bf16)."""
    return tensors * hidden * elem * tokens


SERVER = r"""
import socket, struct, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4)
print("ready", flush=True)
buf = bytearray(1 << 20)
view = memoryview(buf)
def read_exact(c, n):
    got = 0
    while got < n:
        k = c.recv_into(view[got:n])
        if not k: raise EOFError
        got += k
while True:
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = bytearray(9); hv = memoryview(head); got = 0
            while got < 9:
                k = c.recv_into(hv[got:])
                if not k: raise EOFError
                got += k
            mode, n = head[0], struct.unpack("!Q", head[1:])[0]
            if n > len(buf):
                buf = bytearray(n); view = memoryview(buf)
            read_exact(c, n)
            if mode == 0:
                c.sendall(head); c.sendall(view[:n])      # ping-pong: echo the whole message
            else:
                c.sendall(b"k")                            # throughput: one-byte acknowledgement
    except (EOFError, ConnectionError):
        c.close()
"""

CLIENT = r"""
import json, socket, struct, sys, time
host, port, size, budget, min_iter, max_iter = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
payload = memoryview(bytes(size))
rbuf = bytearray(size + 9); rview = memoryview(rbuf)
c = socket.create_connection((host, port), timeout=60)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def read_exact(n):
    got = 0
    while got < n:
        k = c.recv_into(rview[got:n])
        if not k: raise EOFError
        got += k
def ping():
    c.sendall(struct.pack("!BQ", 0, size)); c.sendall(payload); read_exact(9 + size)
for _ in range(2):
    ping()
rtts = []
end = time.monotonic() + budget
while len(rtts) < max_iter and (len(rtts) < min_iter or time.monotonic() < end):
    t = time.perf_counter(); ping(); rtts.append(time.perf_counter() - t)
head = struct.pack("!BQ", 1, size)
sent = 0
t0 = time.perf_counter(); end = time.monotonic() + budget
while sent < max(min_iter, 3) or (time.monotonic() < end and sent < 100000):
    c.sendall(head); c.sendall(payload); sent += 1
acks = 0
while acks < sent:                                  # one byte per message
    k = len(c.recv(min(sent - acks, 1 << 16)))
    if not k: raise EOFError
    acks += k
took = time.perf_counter() - t0
c.close()
print(json.dumps({"rtt_s": rtts, "messages": sent, "stream_s": took}))
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return done


def _ns(ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return _run(["ip", "netns", "exec", ns, *cmd], **kw)


class HopPair:
    """The two namespaces, their veth and wireguard-go tunnel (context manager; tears down)."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="h5-hop-"))
        self.wg_procs: list[subprocess.Popen] = []
        self.server: subprocess.Popen | None = None

    def __enter__(self) -> "HopPair":
        for tool in ("ip", "wg", "wireguard-go"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed")
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def _up(self) -> None:
        for ns in (NS_A, NS_B):
            if ns in _run(["ip", "netns", "list"]).stdout.split():
                raise RuntimeError(f"namespace {ns} exists already (another hop bench running?)")
        for ns in (NS_A, NS_B):
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", VETH_A, "netns", NS_A, "type", "veth", "peer", "name", VETH_B, "netns", NS_B])
        keys = {}
        for ns, veth, wg, under, over in ((NS_A, VETH_A, WG_A, UNDER_A, OVER_A), (NS_B, VETH_B, WG_B, UNDER_B, OVER_B)):
            _run(["ip", "-n", ns, "addr", "add", f"{under}/24", "dev", veth])
            _run(["ip", "-n", ns, "link", "set", veth, "up"])
            private = _run(["wg", "genkey"]).stdout.strip()
            key_file = self.tmp / f"{wg}.key"
            key_file.touch(mode=0o600)
            key_file.write_text(private + "\n")
            keys[ns] = (key_file, _run(["wg", "pubkey"], input=private + "\n").stdout.strip())
            env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
            proc = subprocess.Popen(["ip", "netns", "exec", ns, "wireguard-go", "-f", wg], env=env,
                                    stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"{wg}.log", "wb"))
            self.wg_procs.append(proc)
            deadline = time.monotonic() + 10
            while not (WG_RUN_DIR / f"{wg}.sock").exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"wireguard-go {wg} did not start: "
                                       + (self.tmp / f"{wg}.log").read_text(errors="replace")[-500:])
                time.sleep(0.02)
        for ns, wg, over, other, other_under, other_over in (
                (NS_A, WG_A, OVER_A, NS_B, UNDER_B, OVER_B), (NS_B, WG_B, OVER_B, NS_A, UNDER_A, OVER_A)):
            _ns(ns, "wg", "set", wg, "private-key", str(keys[ns][0]), "listen-port", str(WG_PORT),
                "peer", keys[other][1], "allowed-ips", f"{other_over}/32", "endpoint", f"{other_under}:{WG_PORT}")
            _run(["ip", "-n", ns, "addr", "add", f"{over}/24", "dev", wg])
            _run(["ip", "-n", ns, "link", "set", wg, "mtu", "1420", "up"])
        self.server = subprocess.Popen(["ip", "netns", "exec", NS_B, sys.executable, "-c", SERVER, str(SERVER_PORT)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.server.stdout.readline().strip() != "ready":
            raise RuntimeError("hop server did not start: " + self.server.stderr.read()[-500:])

    def down(self) -> None:
        for proc in [self.server, *self.wg_procs]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        for ns in (NS_A, NS_B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for wg in (WG_A, WG_B):
            (WG_RUN_DIR / f"{wg}.sock").unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def wireguard_go_pids(self) -> list[int]:
        """wireguard-go's own PIDs (children of the `ip netns exec` wrappers)."""
        out = []
        for proc in self.wg_procs:
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                out += [int(k) for k in (task / "children").read_text().split()]
            out.append(proc.pid)   # ip netns exec execs wireguard-go itself: same PID
        return sorted(set(out))

    def ping_pong(self, host: str, size: int, budget_s: float, min_iter: int, max_iter: int) -> dict:
        out = _ns(NS_A, sys.executable, "-c", CLIENT, host, str(SERVER_PORT), str(size), str(budget_s),
                  str(min_iter), str(max_iter), timeout=600).stdout
        return json.loads(out)






def case_figures(raw: dict, size: int) -> dict:
    rtt_ms = [r * 1000 for r in raw["rtt_s"]]
    return {"rtt_ms_p50": round(percentile(rtt_ms, 50), 4), "rtt_ms_p99": round(percentile(rtt_ms, 99), 4),
            "samples": len(rtt_ms), "throughput_gbit_s": round(raw["messages"] * size * 8 / raw["stream_s"] / 1e9, 4)}


def summarize(cases: list[dict]) -> list[dict]:
    """Medians over repeats per (model, tokens, path), and overlay/plain ratios (p50 RTT, p99 RTT,
    throughput) with the range of the per-pair ratios."""
    out = []
    keys = sorted({(c["model"], c["tokens"]) for c in cases}, key=lambda k: (k[1], HIDDEN.get(k[0], 0)))
    for model, tokens in keys:
        rows = {path: [c for c in cases if c["model"] == model and c["tokens"] == tokens and c["path"] == path]
                for path in ("plain", "overlay")}
        entry = {"model": model, "hidden": rows["plain"][0]["hidden"], "tokens": tokens, "bytes": rows["plain"][0]["bytes"]}
        for path, rs in rows.items():
            entry[path] = {k: round(statistics.median(r[k] for r in rs), 4)
                           for k in ("rtt_ms_p50", "rtt_ms_p99", "throughput_gbit_s")}
        for k in ("rtt_ms_p50", "rtt_ms_p99", "throughput_gbit_s"):
            entry[f"ratio_{k}"] = round(entry["overlay"][k] / entry["plain"][k], 3) if entry["plain"][k] else None
            pairs = [o[k] / p[k] for p, o in zip(rows["plain"], rows["overlay"]) if p[k]]
            entry[f"ratio_{k}_pairs"] = [round(min(pairs), 3), round(max(pairs), 3)] if pairs else None
        entry["added_one_way_ms_p50"] = round((entry["overlay"]["rtt_ms_p50"] - entry["plain"]["rtt_ms_p50"]) / 2, 4)
        out.append(entry)
    return out


def hop_costs(summary: list[dict]) -> dict:
    """What the scaling model takes: the overlay's added one-way latency (median of the 1-token
    cases) and its encryption cost per byte (the largest message's throughput pair)."""
    small = [e["added_one_way_ms_p50"] for e in summary if e["tokens"] == 1]
    big = max(summary, key=lambda e: e["bytes"])
    over, plain = big["overlay"]["throughput_gbit_s"] * 1e9, big["plain"]["throughput_gbit_s"] * 1e9
    return {"overlay_added_latency_s": max(0.0, statistics.median(small) / 1000) if small else 0.0,
            "overlay_bps": over, "plain_bps": plain,
            "plain_one_way_latency_s": statistics.median(e["plain"]["rtt_ms_p50"] for e in summary if e["tokens"] == 1) / 2000
            if small else None,
            "encryption_s_per_byte": max(0.0, 8.0 / over - 8.0 / plain) if over > 0 and plain > 0 else 0.0,
            "from_bytes": big["bytes"]}


def run_bench(*, models: list[str], prompts: list[int], repeat: int, budget_s: float, min_iter: int = 5,
              max_iter: int = 2000) -> dict:
    before = machine_state()
    cases = []
    with HopPair() as pair:
        wg_pids = pair.wireguard_go_pids()
        for tokens in prompts:
            for model in models:
                size = message_bytes(HIDDEN[model], tokens)
                for _ in range(repeat):
                    for path, host in (("plain", UNDER_B), ("overlay", OVER_B)):
                        raw = pair.ping_pong(host, size, budget_s, min_iter, max_iter)
                        cases.append({"model": model, "hidden": HIDDEN[model], "tokens": tokens, "bytes": size,
                                      "path": path, **case_figures(raw, size)})
        implementation = {"wireguard": "wireguard-go", "pids": wg_pids}
    after = machine_state()
    summary = summarize(cases)
    return {"bench": "hop", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "tunnel": implementation["wireguard"], "mtu": 1420,
            "params": {"models": models, "prompts": prompts, "repeat": repeat, "budget_s": budget_s},
            "machine_before": before, "machine_after": after,
            "steal_share": steal_share(before, after),
            "summary": summary, "hop_costs": hop_costs(summary), "cases": cases}


def table(result: dict) -> str:
    rows = ["| model (hidden) | tokens | message | plain RTT p50 / p99 ms | overlay RTT p50 / p99 ms "
            "| RTT ratio p50 (pairs) | plain / overlay Gbit/s | throughput ratio (pairs) |",
            "|---|---:|---:|---|---|---|---|---|"]
    for e in result["summary"]:
        size = e["bytes"]
        human = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.1f} KiB"
        rows.append(f"| {e['model']} ({e['hidden']}) | {e['tokens']} | {human} "
                    f"| {e['plain']['rtt_ms_p50']:.3f} / {e['plain']['rtt_ms_p99']:.3f} "
                    f"| {e['overlay']['rtt_ms_p50']:.3f} / {e['overlay']['rtt_ms_p99']:.3f} "
                    f"| {e['ratio_rtt_ms_p50']:.2f} ({e['ratio_rtt_ms_p50_pairs'][0]:.2f}-{e['ratio_rtt_ms_p50_pairs'][1]:.2f}) "
                    f"| {e['plain']['throughput_gbit_s']:.2f} / {e['overlay']['throughput_gbit_s']:.2f} "
                    f"| {e['ratio_throughput_gbit_s']:.2f} ({e['ratio_throughput_gbit_s_pairs'][0]:.2f}-"
                    f"{e['ratio_throughput_gbit_s_pairs'][1]:.2f}) |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,8b,70b", help=f"hidden sizes by model class: {sorted(HIDDEN)}")
    ap.add_argument("--prompts", default="1,2048", help="tokens per message")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=1.0, help="seconds per ping-pong and per throughput run")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    result = run_bench(models=a.models.split(","), prompts=[int(p) for p in a.prompts.split(",")],
                       repeat=a.repeat, budget_s=a.budget_s)
    result["command"] = "python -m benchmarks.hop_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(json.dumps(result["hop_costs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
