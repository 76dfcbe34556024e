"""A real Prometheus server (Debian package `prometheus`) scraping given targets, for tests.

`running_prometheus(targets)` starts prometheus on 127.0.0.1 with a temporary config and
temporary storage, waits until it is ready, yields a `PromClient`, and stops it (by PID) and
removes its files even when the test fails. The lead's cluster test can pass the agents' and
head's metrics addresses as targets and reuse `PromClient.wait_for_series`.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

PROMETHEUS = "prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def query(self, promql: str) -> list[dict]:
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise AssertionError(f"prometheus query failed: {body}")
        return body["data"]["result"]

    def wait_for_series(self, promql: str, timeout: float = 30.0) -> list[dict]:
        """Poll until the query returns at least one series; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"no series for {promql!r} within {timeout}s")
            time.sleep(0.5)


def _wait_ready(base_url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"prometheus not ready within {timeout}s")


@contextlib.contextmanager
def running_prometheus(targets: list[str], job: str = "conclave",
                       scrape_interval: str = "1s") -> Iterator[PromClient]:
    binary = shutil.which(PROMETHEUS)
    if binary is None:  # a missing dependency fails, it does not skip
        raise AssertionError("prometheus not installed: apt-get install prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="conclave-prom-"))
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": job, "scrape_interval": scrape_interval,
                            "scrape_timeout": scrape_interval,
                            "static_configs": [{"targets": targets}]}],
    }))
    log = open(workdir / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={config}",
                             f"--storage.tsdb.path={workdir / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             "--storage.tsdb.retention.time=1h"],
                            stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, proc, timeout=30)
        yield PromClient(base_url)
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
