"""Front capacity (issue 18, item 1): the head's TLS front relaying a stub engine that streams as
fast as it can, against the same stub reached directly over TLS.

Three processes per arm, so each one's CPU is its own: a stub OpenAI engine (this file, `stub`:
asyncio, one SSE event per write like vLLM's uvicorn, chunked transfer encoding, every stream
yielding after each event so 256 streams interleave the way a batched engine step emits one token
per stream), the real HeadFront (this file, `front`: TLS with an in-memory identity, API key,
guard, stage gate, receipts and serving stats, built from tests/front's simulated deployment with
the worker stage admitted) and a load client (this file, in the parent: asyncio + httptools, one
TLS connection per stream). The stub stamps every event with CLOCK_MONOTONIC in ns; the client
subtracts it on arrival, so "latency per chunk" is engine write -> client read, and the added
latency of the front is front minus direct.

Arms per concurrency level, interleaved (direct, front, direct, front, ... `--repeat` times):
  direct  client --TLS--> stub's TLS port
  front   client --TLS--> HeadFront --HTTP (loopback)--> stub's plain port
Figures per arm: content chunks/s (client side, first request sent to last stream done),
latency per chunk p50/p99, CPU seconds per 1,000 chunks of the front process (utime+stime from
/proc/PID/stat) and its one-core capacity (1000 / that), stub and client CPU, load average and
steal before/after (the machine is shared: ratios within one run mean more than absolutes).

    .venv/bin/python -m benchmarks.front_bench --streams 1,64,256 --total-chunks 25600 --repeat 3 \\
        --out benchmarks/results/front.json
    .venv/bin/python -m benchmarks.front_bench --streams 256 --profile /tmp/front.prof   # cProfile of the front
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.machine import machine_state, percentile, proc_cpu_s, steal_share

REPO = Path(__file__).resolve().parents[1]
API_KEY = "sk-front-bench"

_EVENT_HEAD = (b'data: {"id":"cmpl-bench","object":"text_completion","created":0,"model":"stub",'
               b'"choices":[{"index":0,"text":" tok","logprobs":null,"finish_reason":null,"stop_reason":null}],'
               b'"t_ns":')
_EVENT_TAIL = b'}\n\n'
_STAMP = b'"t_ns":'


def _install_uvloop() -> str:
    """The stub and the client run on uvloop when it is installed (vLLM depends on it), so that
    their own costs stay small next to the front's; the front runs on the loop it runs on in
    production (the standard asyncio loop of its thread)."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


# ---------------------------------------------------------------------------------------- stub
class _StubConnection(asyncio.Protocol):
    """One engine connection: read the request, stream `max_tokens` events, usage, [DONE], close."""

    def __init__(self):
        self.buf = b""
        self.transport = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.writable.clear()

    def resume_writing(self):
        self.writable.set()

    def connection_lost(self, exc):
        self.writable.set()
        self.transport = None

    def data_received(self, data):
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return
        body = json.loads(rest[:length] or b"{}")
        self.buf = b""
        asyncio.get_running_loop().create_task(self._stream(int(body.get("max_tokens", 16)),
                                                            float(body.get("bench_itl_us", 0)) / 1e6))

    async def _write(self, data: bytes) -> bool:
        if self.transport is None:
            return False
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        if not self.writable.is_set():
            await self.writable.wait()
        return self.transport is not None

    async def _stream(self, n: int, itl_s: float = 0.0) -> None:
        t = self.transport
        if t is None:
            return
        t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        clock = time.monotonic_ns
        start = time.monotonic()
        for i in range(n):
            if not await self._write(b"%s%d%s" % (_EVENT_HEAD, clock(), _EVENT_TAIL)):
                return
            if itl_s > 0:                    # paced: event i+1 is due at (i+1) * itl after the first
                await asyncio.sleep(max(0.0, start + (i + 1) * itl_s - time.monotonic()))
            else:
                await asyncio.sleep(0)       # one event per stream per step, like a batched engine
        usage = (b'data: {"id":"cmpl-bench","object":"text_completion","created":0,"model":"stub","choices":[],'
                 b'"usage":{"prompt_tokens":1,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (n, n + 1))
        if await self._write(usage) and await self._write(b"data: [DONE]\n\n") and self.transport is not None:
            self.transport.write(b"0\r\n\r\n")
            self.transport.close()


async def _serve_stub(ready: Path) -> None:
    from conclave.runtime.endpoint.tls import generate_head_identity
    identity = generate_head_identity(["127.0.0.1", "localhost"])
    loop = asyncio.get_running_loop()
    plain = await loop.create_server(_StubConnection, "127.0.0.1", 0, backlog=1024)
    tls = await loop.create_server(_StubConnection, "127.0.0.1", 0, ssl=identity.server_context(), backlog=1024)
    cert = ready.with_suffix(".stub.crt")
    cert.write_bytes(identity.cert_pem)
    _write_ready(ready, {"plain_port": plain.sockets[0].getsockname()[1],
                         "tls_port": tls.sockets[0].getsockname()[1], "cert": str(cert)})
    await _until_stdin_closes()
    plain.close()
    tls.close()


# ---------------------------------------------------------------------------------------- front
async def _serve_front(ready: Path, upstream: str, profile: str | None) -> None:
    """The real HeadFront on the loop this coroutine runs on (main() picks asyncio or uvloop)."""
    for extra in (REPO / "tests", REPO / "tests" / "front"):
        sys.path.insert(0, str(extra))
    from front_support import Deployment, new_report_signer   # the front tests' simulated deployment

    from conclave.runtime.endpoint.tls import generate_head_identity
    from conclave.runtime.serving.front import HeadFront
    from conclave.runtime.serving.front_report import RunReportState

    deployment = Deployment.create()
    identity = generate_head_identity(["127.0.0.1", "localhost"])
    signer = new_report_signer()
    report = RunReportState(manifest=deployment.manifest, signer=signer)
    report.set_shards_from_model_manifest(deployment.model_manifest)
    front = HeadFront(builder=deployment.builder(identity.spki_sha256, signer.public_key), report=report,
                      upstream=upstream, identity=identity, api_key=API_KEY)
    front.on_peer_admitted(**deployment.worker_admission())
    host, port = await front.start()
    cert = front.write_public_cert(ready.with_suffix(".front.crt"))
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    _write_ready(ready, {"port": port, "cert": str(cert)})
    try:
        await _until_stdin_closes()
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        await front.stop()


def _write_ready(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: (sys.stdin.buffer.read1(1 << 16) or done.set()) and None)
    loop.add_signal_handler(signal.SIGTERM, done.set)
    try:
        await done.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())


class _Child:
    """A bench subprocess (stub or front) that stops when its stdin closes."""

    def __init__(self, role: str, workdir: Path, *args: str, timeout: float = 60.0):
        self.ready = workdir / f"{role}.ready"
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.front_bench", role, "--ready",
                                      str(self.ready), *args], cwd=REPO, stdin=subprocess.PIPE,
                                     stderr=open(workdir / f"{role}.log", "wb"))
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (workdir / f"{role}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{role} did not start: {log}")
            time.sleep(0.05)
        self.info = json.loads(self.ready.read_text())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.terminate()
                self.proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------- client
class _ClientStream(asyncio.Protocol):
    """One streamed completion over TLS; counts content events and their engine->client latency."""

    def __init__(self, request: bytes, samples: list, done: asyncio.Future, sample_every: int, skip: int = 0):
        import httptools
        self.request, self.samples, self.done, self.sample_every = request, samples, done, sample_every
        self.skip = skip                 # chunks not sampled at the start (the connection storm)
        self.parser = httptools.HttpResponseParser(self)
        self.pending = b""
        self.chunks = 0
        self.status = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # a malformed response fails this stream, loudly
            if not self.done.done():
                self.done.set_exception(exc)

    def on_status(self, status):
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes):
        now = time.monotonic_ns()
        events = (self.pending + body).split(b"\n\n")
        self.pending = events.pop()
        for event in events:
            i = event.rfind(_STAMP)
            if i < 0:
                continue
            self.chunks += 1
            if self.chunks > self.skip and self.chunks % self.sample_every == 0:
                self.samples.append(now - int(event[i + len(_STAMP):event.index(b"}", i)]))

    def on_message_complete(self):
        if not self.done.done():
            self.done.set_result((self.status, self.chunks))
        self.transport.close()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"stream ended early after {self.chunks} chunks: {exc}"))


async def _client_run(port: int, cert: str, streams: int, per_stream: int, sample_every: int,
                      itl_us: float = 0.0) -> dict:
    loop = asyncio.get_running_loop()
    ctx = ssl.create_default_context(cafile=cert)
    body = json.dumps({"model": "stub", "prompt": "hi", "max_tokens": per_stream, "stream": True,
                       "stream_options": {"include_usage": True}, "bench_itl_us": itl_us}).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\nAccept: text/event-stream\r\n\r\n%s"
               % (API_KEY.encode(), len(body), body))
    samples: list[int] = []
    futures = [loop.create_future() for _ in range(streams)]
    start = time.monotonic()
    skip = per_stream // 4 if itl_us else 0    # paced: the first quarter overlaps every stream's TLS set-up
    await asyncio.gather(*(loop.create_connection(lambda f=f: _ClientStream(request, samples, f, sample_every, skip),
                                                  "127.0.0.1", port, ssl=ctx) for f in futures))
    results = await asyncio.gather(*futures)
    wall = time.monotonic() - start
    bad = [s for s, _ in results if s != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} streams answered HTTP {bad[0]}")
    chunks = sum(c for _, c in results)
    if chunks != streams * per_stream:
        raise RuntimeError(f"received {chunks} content chunks, expected {streams * per_stream}")
    return {"wall_s": wall, "chunks": chunks, "samples_ns": samples}


# ---------------------------------------------------------------------------------------- figures








def measure(arm: str, port: int, cert: str, streams: int, per_stream: int, pids: dict[str, int],
            sample_every: int, itl_us: float = 0.0) -> dict:
    before_cpu = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    client_before = os.times()
    state_before = machine_state()
    run = asyncio.run(_client_run(port, cert, streams, per_stream, sample_every, itl_us))
    state_after = machine_state()
    client_after = os.times()
    cpu = {name: round(proc_cpu_s(pid) - before_cpu[name], 3) for name, pid in pids.items()}
    cpu["client"] = round((client_after.user - client_before.user) + (client_after.system - client_before.system), 3)
    lat_ms = [s / 1e6 for s in run["samples_ns"]]
    out = {"arm": arm, "streams": streams, "paced_itl_us": itl_us, "chunks_per_stream": per_stream, "chunks": run["chunks"],
           "wall_s": round(run["wall_s"], 3), "chunks_per_s": round(run["chunks"] / run["wall_s"], 1),
           "latency_ms": {"p50": round(percentile(lat_ms, 50), 3), "p99": round(percentile(lat_ms, 99), 3),
                          "samples": len(lat_ms)},
           "cpu_s": cpu, "cpu_s_per_1000_chunks": {k: round(v * 1000 / run["chunks"], 4) for k, v in cpu.items()},
           "machine_before": state_before, "machine_after": state_after,
           "steal_share": steal_share(state_before, state_after)}
    if "front" in cpu and cpu["front"] > 0:
        out["front_one_core_chunks_per_s"] = round(run["chunks"] / cpu["front"], 1)
    return out


def summarize(runs: list[dict]) -> dict:
    """Per concurrency level: median per arm (min-max), front/direct ratio of medians, added latency,
    the front's CPU per 1,000 chunks and its one-core capacity."""
    levels: dict[int, dict] = {}
    paced = [r for r in runs if r.get("paced_itl_us")]
    runs = [r for r in runs if not r.get("paced_itl_us")]
    for streams in sorted({r["streams"] for r in runs}):
        arms = {arm: [r for r in runs if r["streams"] == streams and r["arm"] == arm] for arm in ("direct", "front")}
        if not arms["direct"] or not arms["front"]:
            continue

        def med(arm, key):
            values = [key(r) for r in arms[arm]]
            return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                    "max": round(max(values), 3)}
        d_rate, f_rate = med("direct", lambda r: r["chunks_per_s"]), med("front", lambda r: r["chunks_per_s"])
        pairs = [f["chunks_per_s"] / d["chunks_per_s"] for d, f in zip(arms["direct"], arms["front"])]
        level = {"direct_chunks_per_s": d_rate, "front_chunks_per_s": f_rate,
                 "throughput_ratio": round(f_rate["median"] / d_rate["median"], 3),
                 "throughput_ratio_pairs": [round(min(pairs), 3), round(max(pairs), 3)]}
        for q in ("p50", "p99"):
            d, f = med("direct", lambda r: r["latency_ms"][q]), med("front", lambda r: r["latency_ms"][q])
            level[f"latency_{q}_ms"] = {"direct": d, "front": f}
            level[f"added_latency_{q}_ms"] = round(f["median"] - d["median"], 3)
        level["front_cpu_s_per_1000_chunks"] = med("front", lambda r: r["cpu_s_per_1000_chunks"]["front"])
        cap = [r["front_one_core_chunks_per_s"] for r in arms["front"] if "front_one_core_chunks_per_s" in r]
        if cap:
            level["front_one_core_chunks_per_s"] = round(statistics.median(cap), 1)
        level["stub_cpu_s_per_1000_chunks"] = {arm: med(arm, lambda r: r["cpu_s_per_1000_chunks"]["stub"])["median"]
                                               for arm in arms}
        calm = {arm: [r for r in paced if r["streams"] == streams and r["arm"] == arm] for arm in ("direct", "front")}
        if calm["direct"] and calm["front"]:
            level["paced"] = {"chunks_per_s": {arm: round(statistics.median(r["chunks_per_s"] for r in rs), 1)
                                               for arm, rs in calm.items()}}
            for q in ("p50", "p99"):
                d = statistics.median(r["latency_ms"][q] for r in calm["direct"])
                f = statistics.median(r["latency_ms"][q] for r in calm["front"])
                level["paced"][f"latency_{q}_ms"] = {"direct": round(d, 3), "front": round(f, 3)}
                level["paced"][f"added_latency_{q}_ms"] = round(f - d, 3)
        levels[streams] = level
    return levels


def run_bench(*, streams: list[int], total_chunks: int, repeat: int, sample_every: int = 1,
              profile: str | None = None, paced_rate: float = 2000.0, paced_s: float = 2.0,
              front_loop: str = "asyncio") -> dict:
    loop_kind = _install_uvloop()
    with tempfile.TemporaryDirectory(prefix="front-bench-") as tmp:
        workdir = Path(tmp)
        stub = _Child("stub", workdir)
        front = None
        try:
            front = _Child("front", workdir, "--upstream", f"127.0.0.1:{stub.info['plain_port']}",
                           "--loop", front_loop, *(["--profile", profile] if profile else []))
            # warm both paths (TLS session set-up, imports, first-request costs)
            measure("direct", stub.info["tls_port"], stub.info["cert"], 4, 50, {"stub": stub.pid}, sample_every)
            measure("front", front.info["port"], front.info["cert"], 4, 50, {"stub": stub.pid, "front": front.pid},
                    sample_every)
            state_before = machine_state()
            runs = []
            for n in streams:
                per_stream = max(1, total_chunks // n)
                for _ in range(repeat):
                    runs.append(measure("direct", stub.info["tls_port"], stub.info["cert"], n, per_stream,
                                        {"stub": stub.pid}, sample_every))
                    runs.append(measure("front", front.info["port"], front.info["cert"], n, per_stream,
                                        {"stub": stub.pid, "front": front.pid}, sample_every))
                if paced_rate > 0:       # latency below saturation: every stream one event per n/rate s
                    itl_us = n / paced_rate * 1e6
                    paced_n = max(10, int(paced_rate * paced_s / n))
                    for _ in range(repeat):
                        runs.append(measure("direct", stub.info["tls_port"], stub.info["cert"], n, paced_n,
                                            {"stub": stub.pid}, sample_every, itl_us))
                        runs.append(measure("front", front.info["port"], front.info["cert"], n, paced_n,
                                            {"stub": stub.pid, "front": front.pid}, sample_every, itl_us))
            state_after = machine_state()
        finally:
            if front is not None:
                front.stop()
            stub.stop()
    return {"bench": "front", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "stub_and_client_loop": loop_kind, "front_loop": front_loop,
            "params": {"streams": streams, "total_chunks": total_chunks, "repeat": repeat,
                       "sample_every": sample_every, "paced_rate": paced_rate, "paced_s": paced_s},
            "machine_before": state_before, "machine_after": state_after,
            "steal_share": steal_share(state_before, state_after),
            "levels": summarize(runs), "runs": [{k: v for k, v in r.items()} for r in runs]}


def table(result: dict) -> str:
    rows = ["| streams | direct chunks/s | front chunks/s | front/direct (pair range) | added p50 / p99 ms "
            "| front CPU s per 1k chunks | front one-core chunks/s |", "|---|---|---|---|---|---|---|"]
    for streams, lv in result["levels"].items():
        rows.append(f"| {streams} | {lv['direct_chunks_per_s']['median']:.0f} | {lv['front_chunks_per_s']['median']:.0f} "
                    f"| {lv['throughput_ratio']:.2f} ({lv['throughput_ratio_pairs'][0]:.2f}-{lv['throughput_ratio_pairs'][1]:.2f}) "
                    f"| {lv['added_latency_p50_ms']:.2f} / {lv['added_latency_p99_ms']:.2f} "
                    f"| {lv['front_cpu_s_per_1000_chunks']['median']:.3f} | {lv.get('front_one_core_chunks_per_s', 0):.0f} |")
    paced = [(s, lv["paced"]) for s, lv in result["levels"].items() if "paced" in lv]
    if paced:
        rows += ["", f"Below saturation ({result['params']['paced_rate']:.0f} chunks/s over all streams):", "",
                 "| streams | direct p50 / p99 ms | front p50 / p99 ms | added p50 / p99 ms |", "|---|---|---|---|"]
        for s, p in paced:
            rows.append(f"| {s} | {p['latency_p50_ms']['direct']:.2f} / {p['latency_p99_ms']['direct']:.2f} "
                        f"| {p['latency_p50_ms']['front']:.2f} / {p['latency_p99_ms']['front']:.2f} "
                        f"| {p['added_latency_p50_ms']:.2f} / {p['added_latency_p99_ms']:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("stub", "front"):
        role = argv.pop(0)
        ap = argparse.ArgumentParser(prog=f"front_bench {role}")
        ap.add_argument("--ready", type=Path, required=True)
        ap.add_argument("--upstream")
        ap.add_argument("--profile")
        ap.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"))
        a = ap.parse_args(argv)
        if role == "stub":
            _install_uvloop()
            asyncio.run(_serve_stub(a.ready))
        else:
            if a.loop == "uvloop":
                _install_uvloop()
            asyncio.run(_serve_front(a.ready, a.upstream, a.profile))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="1,64,256", help="concurrency levels, comma separated")
    ap.add_argument("--total-chunks", type=int, default=51200, help="content chunks per measurement (split over streams)")
    ap.add_argument("--repeat", type=int, default=3, help="measurements per arm and level, interleaved")
    ap.add_argument("--sample-every", type=int, default=1, help="keep every k-th chunk's latency")
    ap.add_argument("--profile", help="cProfile the front process into this file")
    ap.add_argument("--paced-rate", type=float, default=2000.0,
                    help="chunks/s over all streams for the latency runs below saturation (0: none)")
    ap.add_argument("--paced-s", type=float, default=2.0, help="length of each paced run")
    ap.add_argument("--front-loop", default="asyncio", choices=("asyncio", "uvloop"),
                    help="event loop of the front process")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    result = run_bench(streams=[int(s) for s in a.streams.split(",")], total_chunks=a.total_chunks,
                       repeat=a.repeat, sample_every=a.sample_every, profile=a.profile,
                       paced_rate=a.paced_rate, paced_s=a.paced_s, front_loop=a.front_loop)
    result["command"] = "python -m benchmarks.front_bench " + " ".join(argv)
    text = json.dumps(result, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
