"""A cluster assembled only from `conclave node` processes, started the way README and the Helm chart do.

Four hosts in network namespaces stand for the model owner's machine (OWNER) and three CVMs (HEAD, W1,
W2), run by three node owners (owner-a: node-0 on HEAD, owner-b: node-1 on W1, owner-c: node-2 on W2).
Phase 1 runs README's "Run on your own machines" bash blocks exactly as written, each on its host: every
node owner makes its key there and hands its public key to the deployment owner, who lists them in the
signed manifest; once each node runs, its owner attests and enrols it over its status socket (the
blocks written for HEAD run on W1 and W2 with their stage and owner names). One substitution, because
this machine has no TEE: every `conclave node` also gets `--evidence sim --bundle-file attester.json
--sim-root sim-root.pem`, the broker, `conclave owner enroll` and `conclave verify` get `--sim-root`,
and policy.yaml is the simulated policy. Phase 2 renders helm/conclave with real Helm from the same
signed manifest, takes every pod's args and environment and runs them in the same namespaces as a
kubelet would (each pod in its own mount namespace: the manifest Secret at /etc/conclave, memory
volumes at /run and /tmp, the cache at /var/cache/conclave; service names in /etc/hosts); acting as
each pool's owner, it then runs helm/README.md's `conclave owner enroll` inside each pod's mount
namespace (as `kubectl exec -i` would), the owner key on stdin. Both phases must serve the sealed
default model and give the golden answer.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SERVE_TIMEOUT = 900.0
ANSWER = "The capital of France is Paris."
# host -> the stage it runs and that stage's node owner, as the README's manifest lists them
STAGES = {"HEAD": ("node-0", "owner-a"), "W1": ("node-1", "owner-b"), "W2": ("node-2", "owner-c")}
POD_STATUS_SOCKET = "/run/conclave/status.sock"   # the chart's --status-socket, on the pod's memory volume


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Run on your own machines"):]
    section = section[:section.index("\n## ", 3)]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def block(blocks: list[str], first_line_prefix: str) -> str:
    found = [b for b in blocks if b.splitlines()[0].startswith(first_line_prefix)]
    assert len(found) == 1, f"README has no single block starting {first_line_prefix!r}"
    return found[0]


def no_tee(script: str) -> str:
    """The one substitution: simulated evidence instead of this machine's (absent) TEE."""
    script = script.replace("conclave node ", "conclave node --evidence sim --bundle-file attester.json "
                                              "--sim-root sim-root.pem ")
    script = script.replace("conclave broker ", "conclave broker --sim-root sim-root.pem ")
    script = script.replace("conclave owner enroll ", "conclave owner enroll --sim-root sim-root.pem ")
    return script.replace("conclave verify ", "conclave verify --sim-root sim-root.pem ")


def on_host(script: str, name: str) -> str:
    """A block README writes for HEAD's stage and owner (node-0, owner-a), as that host's owner runs it."""
    node, owner = STAGES[name]
    return script.replace("node-0", node).replace("owner-a", owner)


class Hosts:
    def __init__(self, tmp: Path):
        from conclave.runtime.local import hosts as local_hosts
        self.local = local_hosts
        pool = local_hosts.parse_underlay(local_hosts.DEFAULT_UNDERLAY_POOL)
        subnet = local_hosts.pick_subnet(pool, local_hosts.routes_in_root())
        self.hosts = local_hosts.LocalHosts(os.urandom(3).hex(), subnet)
        self.tmp = tmp
        # the nodes' state dir (each one's Ray sessions under it): short, since Ray's socket paths must
        # fit AF_UNIX's 107 bytes and pytest's tmp path alone takes half of that
        self.state = Path(tempfile.mkdtemp(prefix="cm-", dir="/tmp"))
        self.names = ["OWNER", "HEAD", "W1", "W2"]
        self.by_name = {}
        self.etc_netns: list[Path] = []
        self.mount_points: list[Path] = []   # the pods' mount points this machine lacked (removed again)

    def create(self) -> None:
        for name, host in zip(self.names, self.hosts.create(len(self.names))):
            self.by_name[name] = host
            (self.tmp / name).mkdir(mode=0o700)

    def ip(self, name: str) -> str:
        return self.by_name[name].underlay_ip

    def env(self, **extra) -> dict:
        env = {"PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
               "CONCLAVE_STATE_DIR": str(self.state), **{n: self.ip(n) for n in self.names}}
        for key in ("CONCLAVE_CACHE_DIR", "CONCLAVE_VECTORS"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(extra)
        return env

    def run(self, name: str, script: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
        res = subprocess.run(["ip", "netns", "exec", self.by_name[name].netns, "bash", "-euo", "pipefail", "-c", script],
                             cwd=self.tmp / name, env=env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"on {name}: {script}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        return res

    def kill(self, *names: str) -> None:
        from conclave.runtime.node import process
        for name in names:
            process.kill_netns_processes(self.by_name[name].netns)

    def teardown(self) -> list[str]:
        self.kill(*self.by_name)
        for path in self.etc_netns:
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.state, ignore_errors=True)
        for path in reversed(self.mount_points):
            try:
                path.rmdir()              # only while empty: never anything this test did not make
            except OSError:
                pass
        return self.local.destroy(self.hosts.created)


def sim_material(tmp: Path, nodes: list[str]) -> tuple[Path, dict[str, bytes], str]:
    """The simulated vendor root, one attester per node (secret, 0600 bundles) and the sim policy."""
    from conclave.runtime.attestation.sim import SimulatedRoot
    from conclave.runtime.local.trust import local_measurement, sim_policy
    root = SimulatedRoot.generate()
    pem = tmp / "sim-root.pem"
    pem.write_bytes(root.cert_pem)
    measurement = local_measurement()
    bundles = {n: json.dumps({"sim_attester": base64.b64encode(
        root.issue_attester(n, measurement=measurement).to_secret_bytes()).decode()}).encode() for n in nodes}
    return pem, bundles, yaml.safe_dump(sim_policy(measurement))


def put_bundle(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def wait_answer(head_ip: str, ca: Path, what: str) -> str:
    deadline = time.monotonic() + SERVE_TIMEOUT
    body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}],
                       "max_tokens": 16, "temperature": 0}).encode()
    last = None
    while time.monotonic() < deadline:
        if ca.exists():
            try:
                ctx = ssl.create_default_context(cafile=str(ca))
                req = urllib.request.Request(f"https://{head_ip}:8443/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
                    return json.loads(resp.read())["choices"][0]["message"]["content"]
            except Exception as exc:  # noqa: BLE001 - not serving yet
                last = exc
        time.sleep(5)
    raise AssertionError(f"{what}: the head did not serve within {SERVE_TIMEOUT:.0f}s ({last!r})")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces); CI runs as root")
    h = Hosts(tmp_path_factory.mktemp("own-machines"))
    try:
        h.create()
        yield h
    finally:
        left = h.teardown()
        assert not left, f"left behind: {left}"


@pytest.fixture(scope="module")
def readme_cluster(hosts):
    """Phase 1: README's blocks, each on its host; returns what phase 2 and the checks need."""
    blocks = readme_blocks()
    assert len(blocks) == 8, "README's own-machines section changed: update this test with it"
    nodes = {name: node for name, (node, _) in STAGES.items()}
    pem, bundles, policy = sim_material(hosts.tmp, list(nodes.values()))
    env = hosts.env()
    hosts.run("OWNER", block(blocks, "# model owner, on OWNER: import"), env)
    owner_dir = hosts.tmp / "OWNER"
    (owner_dir / "policy.yaml").write_text(policy)
    keygen = block(blocks, "# node owner owner-a, on HEAD (")
    for name, (_, owner) in STAGES.items():           # each node owner's key; its public half to the deployment owner
        hosts.run(name, on_host(keygen, name), env)
        assert (hosts.tmp / name / f"{owner}.key").stat().st_mode & 0o077 == 0
        shutil.copy(hosts.tmp / name / f"{owner}.pub", owner_dir / f"{owner}.pub")
    hosts.run("OWNER", block(blocks, "# deployment owner"), env)      # the deployment owner's laptop: OWNER here
    fp = subprocess.run([str(VENV_BIN / "conclave"), "manifest", "show", str(owner_dir / "manifest.json"),
                         "--owner-fingerprint"], capture_output=True, text=True, check=True).stdout.strip()
    env = hosts.env(FP=fp)
    for name in hosts.names:
        shutil.copy(pem, hosts.tmp / name / "sim-root.pem")
        if name != "OWNER":
            for f in ("manifest.json", "model-manifest.json"):
                shutil.copy(owner_dir / f, hosts.tmp / name / f)
    hosts.run("OWNER", no_tee(block(blocks, "# model owner, on OWNER: the key broker")), env)
    for name, node in nodes.items():
        put_bundle(hosts.tmp / name / "attester.json", bundles[node])
    hosts.run("HEAD", no_tee(block(blocks, "# on HEAD")), env)
    worker = block(blocks, "# on W1")
    hosts.run("W1", no_tee(worker), env)
    hosts.run("W2", no_tee(worker.replace("node-1", "node-2").replace('"$W1"', '"$W2"')), env)
    enrol = block(blocks, "# node owner owner-a, on HEAD once")
    enrolled = {name: hosts.run(name, no_tee(on_host(enrol, name)), env).stdout for name in STAGES}
    answer = wait_answer(hosts.ip("HEAD"), hosts.tmp / "HEAD" / "head-tls.pem", "README nodes")
    return {"blocks": blocks, "env": env, "fp": fp, "answer": answer, "bundles": bundles, "nodes": nodes,
            "enrolled": enrolled}


def test_readme_commands_serve_the_sealed_model(hosts, readme_cluster):
    assert readme_cluster["answer"] == ANSWER
    res = hosts.run("HEAD", no_tee(block(readme_cluster["blocks"], "# a client")), readme_cluster["env"])
    verified = json.loads(res.stdout.splitlines()[0])
    assert verified["ok"] is True, verified
    assert ANSWER in res.stdout
    for name, (node, owner) in STAGES.items():   # every node: enrolled by its stage's owner, its own shard verified
        assert f"enrolled stage {node} for owner {owner} " in readme_cluster["enrolled"][name]
        assert "(delivered to the node)" in readme_cluster["enrolled"][name]
        status = json.loads(hosts.run(name, "conclave mesh status --socket node.sock --json",
                                      readme_cluster["env"]).stdout)["nodes"][0]
        assert status["node"] == node
        assert status["enrolment"]["stage"] == node and status["enrolment"]["owner"] == owner, status["enrolment"]
        life = status["lifecycle"]
        assert life["shard"]["sealed"] is True and life["shard"]["verified"] is True, life
        assert life["state"] == ("serving" if node == "node-0" else "ray_joined"), life


# -- phase 2: the Helm chart's pods, run by a kubelet stand-in ----------------------------------------------------
def render_pods(manifest_text: str, model_manifest: str, fp: str) -> tuple[dict[str, dict], dict]:
    import helm_python as helm
    from conclave.runtime.manifest.document import verify_bytes
    digest = verify_bytes(manifest_text.encode(), trusted_owner=None, allow_unpinned=True).digest.hex()
    values = {"image": {"digest": "sha256:" + "a" * 64},
              "manifest": {"signed": manifest_text, "digest": digest, "ownerFingerprint": fp},
              "model": {"manifest": model_manifest},
              "agent": {"evidence": "sim", "gpuEvidence": "none", "logFormat": "text"},
              "pools": [{"name": owner, "stages": [{"name": node, "role": role}],
                         "runtimeClassName": "kata-qemu-tdx", "nodeSelector": {"conclave.dev/owner": owner}}
                        for owner, node, role in (("owner-a", "node-0", "head"), ("owner-b", "node-1", "worker"),
                                                  ("owner-c", "node-2", "worker"))]}
    with helm.Chart.load(str(ROOT / "helm" / "conclave")) as chart:
        files = chart.render(values, name="demo", namespace="conclave", is_install=True)
    docs = [d for name, text in files.items() if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    pods = {}
    for d in docs:
        if d["kind"] in ("StatefulSet", "Deployment"):
            spec = d["spec"]["template"]["spec"]
            pods[d["metadata"]["name"]] = {"labels": d["spec"]["template"]["metadata"]["labels"],
                                          "container": spec["containers"][0], "volumes": spec.get("volumes", [])}
    secret = next(d for d in docs if d["kind"] == "Secret")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    return pods, {"secret": secret, "services": services}


def kubelet_script(container: dict, pod_ip: str, pod_dir: Path, bundle: Path | None) -> tuple[str, dict]:
    """What a kubelet would run for this container, as one shell script in the pod's mount namespace."""
    env = {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[item["name"]] = pod_ip
    args = [a.replace("$(POD_IP)", pod_ip) for a in container["args"]]
    # pod_dir lies under this machine's /tmp, which the pod's own /tmp hides: the log is opened and
    # every host path is read before that memory volume goes over /tmp
    binds, memory = [], {}
    for m in container.get("volumeMounts", []):
        path = m["mountPath"]
        if path == "/dev/net/tun":
            continue
        if m["name"] in ("run", "tmp"):
            memory[path] = f"mount -t tmpfs -o mode=0755 tmpfs {path}"
        else:
            src = pod_dir / m["name"]
            src.mkdir(exist_ok=True)
            binds.append(f"mount --bind {shlex.quote(str(src))} {path}")
    steps = [f"exec > {shlex.quote(str(pod_dir / 'pod.log'))} 2>&1", "mount --make-rprivate /", *binds,
             *(cmd for path, cmd in memory.items() if path != "/tmp")]
    extra = ""
    if bundle is not None and args[0] == "node":   # the dev-only evidence substitution (no TEE here)
        steps.append(f"install -m 0600 {shlex.quote(str(bundle))} /run/attester.json")
        extra = " --bundle-file /run/attester.json --sim-root /etc/conclave/sim-root.pem"
    if "/tmp" in memory:
        steps.append(memory["/tmp"])
    script = " && ".join(steps) + f" && exec conclave {' '.join(shlex.quote(a) for a in args)}{extra}"
    return script, env


def enrol_pod(hosts: Hosts, host: str, pid: int, stage: str, owner: str, fp: str) -> dict:
    """The pool's owner enrols its pod as helm/README.md shows (`kubectl exec -i POD -- conclave owner
    enroll --owner-key /dev/stdin ... < KEY`): the same command in the pod's mount namespace, the key on stdin."""
    socket = Path(f"/proc/{pid}/root{POD_STATUS_SOCKET}")
    deadline = time.monotonic() + 120
    while not socket.is_socket():
        assert Path(f"/proc/{pid}").exists(), f"pod of {stage} exited before its status socket appeared"
        assert time.monotonic() < deadline, f"pod of {stage}: no status socket at {POD_STATUS_SOCKET}"
        time.sleep(1)
    key = hosts.tmp / host / f"{owner}.key"
    res = hosts.run(host, f"nsenter --target {pid} --mount -- conclave owner enroll --owner-key /dev/stdin "
                          f"--manifest /etc/conclave/manifest.json --owner-fingerprint {fp} --stage {stage} "
                          f"--status-socket {POD_STATUS_SOCKET} --sim-root /etc/conclave/sim-root.pem --json "
                          f"< {shlex.quote(str(key))}", hosts.env())
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def helm_cluster(hosts, readme_cluster):
    hosts.kill("HEAD", "W1", "W2")                 # phase 1's nodes and rendezvous; the model owner stays
    owner_dir = hosts.tmp / "OWNER"
    manifest_text = (owner_dir / "manifest.json").read_text()
    pods, objects = render_pods(manifest_text, (owner_dir / "model-manifest.json").read_text(), readme_cluster["fp"])
    stage_host = {"node-0": "HEAD", "node-1": "W1", "node-2": "W2"}
    rendezvous_svc = next(n for n in objects["services"] if n.endswith("-rendezvous"))
    for name in ("HEAD", "W1", "W2"):               # cluster DNS for the pods: the rendezvous Service
        etc = Path("/etc/netns") / hosts.by_name[name].netns
        etc.mkdir(parents=True, exist_ok=True)
        hosts.etc_netns.append(etc)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{hosts.ip('HEAD')} {rendezvous_svc}\n")
    for pod in pods.values():                       # what a container runtime makes in the pod's root
        for m in pod["container"].get("volumeMounts", []):
            path = Path(m["mountPath"])
            missing = [p for p in (path, *path.parents) if not p.exists()]
            for made in reversed(missing):
                made.mkdir()
                hosts.mount_points.append(made)
    started, pids = [], {}
    for workload, pod in sorted(pods.items(), key=lambda kv: kv[1]["labels"].get("conclave.dev/role") != "head"):
        stage = pod["labels"].get("conclave.dev/stage")
        host = stage_host.get(stage, "HEAD")        # the rendezvous Deployment lands on HEAD's machine
        pod_dir = hosts.tmp / f"pod-{workload}"
        pod_dir.mkdir(mode=0o700)
        (pod_dir / "manifest").mkdir()
        for key, value in objects["secret"]["stringData"].items():
            (pod_dir / "manifest" / key).write_text(value)
        shutil.copy(hosts.tmp / "sim-root.pem", pod_dir / "manifest" / "sim-root.pem")
        bundle = None
        if stage:
            bundle = pod_dir / "attester.json"
            put_bundle(bundle, readme_cluster["bundles"][stage])
        script, env = kubelet_script(pod["container"], hosts.ip(host), pod_dir, bundle)
        # `ip netns exec` and `unshare` exec (no fork), so this pid is the pod's shell, then its conclave
        proc = subprocess.Popen(["ip", "netns", "exec", hosts.by_name[host].netns, "unshare", "--mount", "sh", "-c",
                                 script], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        started.append((workload, pod["container"]["args"]))
        if stage:
            pids[stage] = proc.pid
    owners = {node: owner for node, owner in STAGES.values()}
    enrolled = {stage: enrol_pod(hosts, stage_host[stage], pid, stage, owners[stage], readme_cluster["fp"])
                for stage, pid in pids.items()}
    head_pod = next(w for w, p in pods.items() if p["labels"].get("conclave.dev/role") == "head")
    ca = hosts.tmp / "helm-head-ca.pem"
    deadline = time.monotonic() + 300
    while not ca.exists() and time.monotonic() < deadline:
        res = subprocess.run([str(VENV_BIN / "python"), "-c",
                              "import ssl,sys; print(ssl.get_server_certificate((sys.argv[1], 8443)))", hosts.ip("HEAD")],
                             capture_output=True, text=True)
        if res.returncode == 0 and "BEGIN CERTIFICATE" in res.stdout:
            ca.write_text(res.stdout)
        else:
            time.sleep(3)
    answer = wait_answer(hosts.ip("HEAD"), ca, "Helm-rendered pods")
    return {"answer": answer, "started": started, "head_pod": head_pod, "ca": ca, "enrolled": enrolled,
            "owners": owners}


def test_helm_rendered_pods_serve_the_sealed_model(helm_cluster):
    assert helm_cluster["answer"] == ANSWER
    node_args = [args for _, args in helm_cluster["started"] if args[0] == "node"]
    assert len(node_args) == 3
    head = next(a for a in node_args if "--role=head" in a)
    assert any(a.startswith("--front-port=") for a in head)           # the chart serves the head's front
    assert all("--model-manifest=/etc/conclave/model-manifest.json" in a for a in node_args)
    assert all(f"--status-socket={POD_STATUS_SOCKET}" in a for a in node_args)
    assert set(helm_cluster["enrolled"]) == set(helm_cluster["owners"])   # every stage's pod, by its pool's owner
    for stage, answer in helm_cluster["enrolled"].items():
        assert answer["ok"] is True and answer["delivered"] is True, answer
        assert answer["stage"] == stage and answer["owner"] == helm_cluster["owners"][stage], answer
