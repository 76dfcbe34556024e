"""A real Prometheus server (Debian package `prometheus`) scraping given targets, for tests.

`running_prometheus(targets)` starts prometheus on 127.0.0.1 with a temporary config and
temporary storage, waits until it is ready, yields a `PromClient`, and stops it (by PID) and
removes its files even when the test fails. With `netns=NAME` it runs inside that network
namespace (127.0.0.1 there, e.g. the head's, to scrape agents on their overlay addresses) and
the client queries it from inside the namespace. Used by tests/ops (loopback) and by
tests/confidential (a Prometheus inside the head of a real cluster).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

PROMETHEUS = "prometheus"
_FETCH = ("import sys, urllib.request\n"
          "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def netns_prefix(netns: str) -> list[str]:
    """A namespace name (`ip netns exec`) or a path to one (`nsenter --net=`: a node's inner
    namespace, reached through the fd its agent holds; both exec the command in place)."""
    return ["nsenter", f"--net={netns}"] if netns.startswith("/") else ["ip", "netns", "exec", netns]


class PromClient:
    """Prometheus' HTTP API at base_url, reached directly or from inside network namespace netns."""

    def __init__(self, base_url: str, netns: str | None = None) -> None:
        self.base_url, self.netns = base_url, netns

    def _get(self, path: str) -> str:
        url = self.base_url + path
        if self.netns is None:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode()
        res = subprocess.run([*netns_prefix(self.netns), sys.executable, "-c", _FETCH, url],
                             capture_output=True, text=True, timeout=15)
        if res.returncode != 0:
            raise OSError(f"GET {path} in {self.netns}: rc={res.returncode} {res.stderr.strip()[-500:]}")
        return res.stdout

    def ready(self) -> bool:
        try:
            return "Ready" in self._get("/-/ready")
        except OSError:
            return False

    def query(self, promql: str) -> list[dict]:
        body = json.loads(self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        if body.get("status") != "success":
            raise AssertionError(f"prometheus query failed: {body}")
        return body["data"]["result"]

    def wait_for_series(self, promql: str, timeout: float = 30.0, *, count: int = 1,
                        deadline: float | None = None) -> list[dict]:
        """Poll until the query returns at least `count` series; fail after `timeout` seconds
        (or at `deadline`, a time.monotonic() value shared by several waits)."""
        if deadline is None:
            deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if len(result) >= count:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql!r}: {len(result)} series, wanted {count}: {result}")
            time.sleep(0.5)


def _wait_ready(client: PromClient, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not client.ready():
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"prometheus not ready within {timeout}s")
        time.sleep(0.3)


@contextlib.contextmanager
def running_prometheus(targets: list[str], job: str = "conclave", scrape_interval: str = "1s", *,
                       netns: str | None = None, port: int | None = None) -> Iterator[PromClient]:
    """netns: run (and query) inside that network namespace; port: its listen port there
    (default: a port free on this host's loopback)."""
    binary = shutil.which(PROMETHEUS)
    if binary is None:  # a missing dependency fails, it does not skip
        raise AssertionError("prometheus not installed: apt-get install prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="conclave-prom-"))
    port = port or free_port()
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": job, "scrape_interval": scrape_interval,
                            "scrape_timeout": scrape_interval,
                            "static_configs": [{"targets": targets}]}],
    }))
    log = open(workdir / "prometheus.log", "wb")
    # `ip netns exec` execs prometheus in place: the PID is prometheus itself either way
    prefix = netns_prefix(netns) if netns else []
    proc = subprocess.Popen([*prefix, binary, f"--config.file={config}",
                             f"--storage.tsdb.path={workdir / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             "--storage.tsdb.retention.time=1h"],
                            stdout=log, stderr=subprocess.STDOUT)
    client = PromClient(f"http://127.0.0.1:{port}", netns)
    try:
        _wait_ready(client, proc, timeout=30)
        yield client
    except BaseException:
        log.flush()
        print((workdir / "prometheus.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
