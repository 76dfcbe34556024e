"""Drive the real CLI: `conclave up --local --detach` / `conclave down`, and inspect what was created.

Used by the session fixtures (tests/serving/conftest.py) and by hand (bf16 vs fp32 measurement).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CONCLAVE = [sys.executable, "-m", "conclave.runtime"]
UP_TIMEOUT = 1200
GOLDEN_PROMPTS = (
    "The capital of France is",
    "List three primary colors:",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Water boils at a temperature of",
)
GOLDEN_MAX_TOKENS = 24


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(args: list[str], env: dict, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(CONCLAVE + args, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"conclave {' '.join(args)} exited {res.returncode}:\n{res.stderr[-4000:]}")
    return res


@dataclass
class Footprint:
    """What a cluster created, observed from outside while it ran."""
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    run_dir: str = ""


def footprint(state_file: Path) -> Footprint:
    st = json.loads(state_file.read_text())
    pids = [g["pid"] for g in st["groups"]]
    for name in st["created"]["netns"]:
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    return Footprint(list(st["created"]["netns"]), list(st["created"]["links"]), sorted(set(pids)), st["run_dir"])


def leftovers(fp: Footprint) -> list[str]:
    left = [f"netns:{n}" for n in fp.netns if Path(f"/var/run/netns/{n}").exists()]
    left += [f"link:{l}" for l in fp.links
             if subprocess.run(["ip", "link", "show", l], capture_output=True).returncode == 0]
    left += [f"pid:{p}" for p in fp.pids if Path(f"/proc/{p}").exists()
             and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    if fp.run_dir and Path(fp.run_dir).exists():
        left.append(f"dir:{fp.run_dir}")
    return left


@dataclass
class Cluster:
    stages: int
    env: dict
    status: dict
    state_file: Path
    footprint: Footprint | None = None
    left_after_down: list[str] | None = None

    @property
    def base_url(self) -> str:
        return self.status["endpoint"]

    @property
    def verify(self):
        """TLS trust for the endpoint: the head's certificate (attested clusters), else the default."""
        ca = self.status.get("ca_cert")
        return ssl.create_default_context(cafile=ca) if ca else True

    @property
    def api_key(self) -> str | None:
        return self.status["api_key"]

    def get_models(self, *, key: str | None = "default") -> int:
        """Status code of GET /models with the cluster's key, another key, or none."""
        key = self.api_key if key == "default" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.base_url + "/models", headers=headers, timeout=30, verify=self.verify).status_code

    def post(self, path: str, body, *, key: str | None = "default", timeout: float = 120) -> httpx.Response:
        headers = {}
        key = self.api_key if key == "default" else key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if isinstance(body, (bytes, str)):
            headers["Content-Type"] = "application/json"
            return httpx.post(self.base_url + path, content=body, headers=headers, timeout=timeout, verify=self.verify)
        return httpx.post(self.base_url + path, json=body, headers=headers, timeout=timeout, verify=self.verify)


def cluster_env(state_dir: Path) -> dict:
    env = dict(os.environ)
    env["CONCLAVE_STATE_DIR"] = str(state_dir)
    return env


@contextlib.contextmanager
def running_cluster(stages: int, state_dir: Path, *, model: str = "smollm2", extra: list[str] = (),
                    network: str | None = "plain"):
    """`conclave up --local --nodes N --detach`, yield, then ALWAYS `conclave down` and record leftovers.

    network: the serving tests pin `--network plain` (the engine path and its golden outputs; the
    confidential path has its own suite, tests/confidential); None = the CLI's default (attested)."""
    extra = [*extra, *(["--network", network] if network else [])]
    env = cluster_env(state_dir)
    state_file = state_dir / "cluster.json"
    cluster = None
    try:
        if model == "smollm2":
            cli(["model", "import", model], env, timeout=600)
        up = cli(["up", "--local", "--nodes", str(stages), "--port", str(free_port()), "--model", model,
                  "--detach", "--json", *extra], env, timeout=UP_TIMEOUT)
        status = json.loads(up.stdout.strip().splitlines()[-1])
        cluster = Cluster(stages, env, status, state_file)
        cluster.footprint = footprint(state_file)
        yield cluster
    finally:
        fp = footprint(state_file) if state_file.exists() else None
        down = cli(["down"], env, timeout=300, check=False)
        if cluster is not None:
            cluster.footprint = _merge(cluster.footprint, fp)
            cluster.left_after_down = leftovers(cluster.footprint)
            if down.returncode != 0:
                cluster.left_after_down.append(f"down exited {down.returncode}: {down.stderr[-500:]}")


def _merge(a: Footprint | None, b: Footprint | None) -> Footprint:
    if a is None or b is None:
        return a or b or Footprint()
    return Footprint(sorted(set(a.netns) | set(b.netns)), sorted(set(a.links) | set(b.links)),
                     sorted(set(a.pids) | set(b.pids)), a.run_dir or b.run_dir)


def greedy_token_ids(cluster: Cluster) -> list[list[int]]:
    """Greedy completions of the golden prompts, as generated token ids."""
    out = []
    for prompt in GOLDEN_PROMPTS:
        resp = cluster.post("/completions", {"model": cluster.status["model"]["name"], "prompt": prompt,
                                             "max_tokens": GOLDEN_MAX_TOKENS, "temperature": 0,
                                             "return_token_ids": True})
        resp.raise_for_status()
        choice = resp.json()["choices"][0]
        assert choice.get("token_ids"), f"server returned no token ids: {choice}"
        out.append(list(choice["token_ids"]))
    return out


def chat_answer(cluster: Cluster, question: str = "What is the capital of France?") -> str:
    resp = cluster.post("/chat/completions", {"model": cluster.status["model"]["name"], "temperature": 0,
                                              "max_tokens": 24, "messages": [{"role": "user", "content": question}]})
    resp.raise_for_status()
    return resp.json()["choices"][0]["message"]["content"]


if __name__ == "__main__":  # by hand: python tests/serving/harness.py MODEL N...
    import tempfile
    model, counts = sys.argv[1], [int(n) for n in sys.argv[2:]]
    results = {}
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp, running_cluster(n, Path(tmp), model=model) as c:
            results[n] = {"ids": greedy_token_ids(c), "chat": chat_answer(c)}
        print(n, json.dumps(results[n]), "leftovers:", c.left_after_down, flush=True)
    base = results[counts[0]]["ids"]
    for n in counts[1:]:
        print(f"N={n} identical to N={counts[0]}:", results[n]["ids"] == base)
