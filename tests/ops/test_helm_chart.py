"""helm/conclave: rendered by real Helm (v4 Go SDK via helm-python-sdk), linted, values checked
against values.schema.json, every rendered object validated against the Kubernetes API schemas
(kubernetes-validate), and the rendered container args parsed by the real `conclave` CLI parser.
Stage names: the install values carry a real signed manifest (Ed25519, this project's manifest
code); every rendered agent's parsed args must boot against it through require_manifest, the
check a node runs before anything else. What is NOT checked here: installing into a cluster, the
ServiceMonitor against the Prometheus Operator CRD schema (checked structurally only)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

import helm_python as helm
import kubernetes_validate
import sim_deployment
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.manifest import Stage, content_digest, require_manifest
from conclave.runtime.manifest import ed25519_keys as keys

CHART = Path(__file__).resolve().parents[2] / "helm" / "conclave"
README = CHART.parent / "README.md"
K8S_VERSION = "1.30.0"

# The stages of values.yaml's example pools (owner = pool name), as the owner signs them.
MANIFEST_STAGES = (Stage("stage-0", "owner-a", "head", 0, 15),
                   Stage("stage-1", "owner-b", "worker", 15, 30))
OWNER_KEY = ed25519.Ed25519PrivateKey.generate()
OWNER_FINGERPRINT = keys.fingerprint(keys.public_key_bytes(OWNER_KEY))


def signed_manifest(stages=MANIFEST_STAGES) -> tuple[str, str]:
    """A real signed manifest (text) and its content digest (hex)."""
    data = sim_deployment.sign_manifest(
        OWNER_KEY, stages=stages, policy=sim_deployment.sim_policy(bytes.fromhex("11" * 48)),
        model_digest="ab" * 32, engine_digest="cd" * 32, rendezvous=(),
        node_owners=sim_deployment.public_keys(sim_deployment.owner_keys(*{s.owner for s in stages})))
    return data.decode(), content_digest(json.loads(data)["manifest"]).hex()


SIGNED, DIGEST = signed_manifest()
INSTALL_VALUES = {
    "image": {"digest": "sha256:" + "a" * 64},
    "manifest": {"signed": SIGNED, "digest": DIGEST, "ownerFingerprint": OWNER_FINGERPRINT},
    "model": {"manifest": json.dumps({"digest": "ab" * 32, "num_layers": 30})},
}
# Kubernetes expands these from the pod's env at start; any concrete value will do for parsing.
ENV_PLACEHOLDERS = {"$(POD_IP)": "10.1.2.3"}


def merged(extra: dict | None = None) -> dict:
    out = copy.deepcopy(INSTALL_VALUES)

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v
    merge(out, extra or {})
    return out


def _pool(name: str, *stages: tuple[str, str], **extra) -> dict:
    return {"name": name, "stages": [{"name": n, "role": r} for n, r in stages],
            "runtimeClassName": "kata-qemu-tdx", "nodeSelector": {"conclave.dev/owner": name}, **extra}


def render(values: dict) -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name="demo", namespace="conclave", is_install=True)
    docs = []
    for name, text in files.items():
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_has_no_errors():
    result = helm.lint(str(CHART), values=INSTALL_VALUES, strict=True)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []


def test_default_values_match_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    install = merged()
    full = copy.deepcopy(defaults)
    for key, value in install.items():
        full[key] = {**full[key], **value} if isinstance(value, dict) else value
    jsonschema.validate(full, schema)


@pytest.mark.parametrize("bad", [
    {"image": {"digest": "latest"}},
    {"pools": [_pool("a", ("s-0", "boss"))]},
    {"pools": [{**_pool("a", ("s-0", "head")), "nodeSelector": {}}]},
    {"pools": [{**_pool("a", ("s-0", "head")), "stages": []}]},            # a pool runs stages
    {"pools": [{**_pool("a", ("s-0", "head")), "role": "head"}]},          # role is per stage now
    {"pools": [_pool("a", ("Stage.0", "head"))]},                          # stage names: DNS labels
    {"pools": [{**_pool("a"), "stages": [{"name": "s-0", "role": "head", "node": "x"}]}]},
    {"agent": {"metrics": {"port": 9469, "listen": "0.0.0.0"}}},
    {"unknownKey": 1},
    {"manifest": {"ownerFingerprint": "D" * 64}},
    {"manifest": {"ownerFingerprint": "d" * 63}},
    {"manifest": {"policy": {"production": True}}},   # the policy comes from the signed manifest
    {"ownerFingerprint": "d" * 64},                   # moved to manifest.ownerFingerprint
    {"rendezvous": {"args": ["rendezvous"]}},         # replaced by rendezvous.extraArgs
])
def test_schema_rejects_bad_values_in_helm(bad):
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError):
            chart.validate_schema(merged(bad))


def test_rendered_objects_are_valid_kubernetes():
    docs = render(merged({"serviceMonitor": {"enabled": True},
                          "agent": {"metrics": {"port": 9469, "listen": "pod"}}}))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["StatefulSet", "StatefulSet", "Service", "Service", "Service", "Service",
                            "Deployment", "Secret", "ServiceAccount", "ServiceMonitor"])
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD: no bundled schema; checked below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_one_single_pod_statefulset_per_stage_in_a_cvm_with_wireguard_rights():
    docs = render(merged())
    sets = {d["metadata"]["labels"]["conclave.dev/pool"]: d for d in by_kind(docs, "StatefulSet")}
    assert set(sets) == {"owner-a", "owner-b"}
    for pool, ds in sets.items():
        assert ds["spec"]["replicas"] == 1
        assert ds["spec"]["serviceName"] == f"demo-conclave-{pool}"  # the pool's headless Service
        spec = ds["spec"]["template"]["spec"]
        assert spec["runtimeClassName"].startswith("kata-qemu-")
        assert spec["nodeSelector"] == {"conclave.dev/owner": pool}
        container = spec["containers"][0]
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"],   # inner netns: SYS_ADMIN
                                                                  "add": ["NET_ADMIN", "SYS_ADMIN"]}
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "@sha256:" in container["image"]
        tun = next(v for v in spec["volumes"] if v["name"] == "tun")
        assert tun["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
        args = container["args"]
        assert args[0] == "node" and f"--owner={pool}" in args
        assert not [a for a in args if "NODE_NAME" in a]  # never the Kubernetes node name
        # the production boot path: signed manifest + pinned owner, never the development flags
        assert "--manifest=/etc/conclave/manifest.json" in args
        assert "--owner-fingerprint=" + OWNER_FINGERPRINT in args
        assert not [a for a in args if a.startswith(("--manifest-digest", "--policy"))]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "manifest")
        assert mount == {"name": "manifest", "mountPath": "/etc/conclave", "readOnly": True}
        annotations = ds["spec"]["template"]["metadata"]["annotations"]
        assert annotations["conclave.dev/manifest-digest"] == DIGEST  # rolls pods on a new manifest
    labels = {p: (ds["metadata"]["labels"]["conclave.dev/stage"], ds["metadata"]["labels"]["conclave.dev/role"])
              for p, ds in sets.items()}
    assert labels == {"owner-a": ("stage-0", "head"), "owner-b": ("stage-1", "worker")}
    assert {ds["metadata"]["name"] for ds in sets.values()} == {"demo-conclave-stage-0",
                                                                 "demo-conclave-stage-1"}


def test_secret_carries_only_the_signed_manifest():
    secret = by_kind(render(merged()), "Secret")[0]
    # the policy travels inside the signed manifest: no separate, unsigned policy file
    assert secret["stringData"] == {"manifest.json": INSTALL_VALUES["manifest"]["signed"],
                                    "model-manifest.json": INSTALL_VALUES["model"]["manifest"]}


def test_existing_secret_replaces_generated_one():
    docs = render(merged({"manifest": {"existingSecret": "mine", "signed": ""}}))
    assert by_kind(docs, "Secret") == []
    ds = by_kind(docs, "StatefulSet")[0]
    vol = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "manifest")
    assert vol["secret"]["secretName"] == "mine"


def test_service_monitor_is_guarded():
    assert by_kind(render(merged()), "ServiceMonitor") == []
    docs = render(merged({"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                          "agent": {"metrics": {"port": 9469, "listen": "pod"}}}))
    sm = by_kind(docs, "ServiceMonitor")[0]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    selector = sm["spec"]["selector"]["matchLabels"]
    services = [s for s in by_kind(docs, "Service")
                if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())]
    assert services and all(any(p["name"] == "metrics" for p in s["spec"]["ports"])
                            for s in services)
    ds = by_kind(docs, "StatefulSet")[0]
    assert "--metrics-host=$(POD_IP)" in ds["spec"]["template"]["spec"]["containers"][0]["args"]


def test_service_monitor_without_reachable_metrics_fails():
    with pytest.raises(helm.HelmError):
        render(merged({"serviceMonitor": {"enabled": True}}))  # metrics on the overlay only


@pytest.mark.parametrize("missing", ["image.digest", "manifest.digest", "manifest.ownerFingerprint",
                                     "manifest.signed"])
def test_required_values_fail_rendering(missing):
    values = merged()
    node = values
    *parents, leaf = missing.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = ""
    with pytest.raises(helm.HelmError):
        render(values)


@pytest.mark.parametrize("heads", [0, 2])
def test_exactly_one_head_stage(heads):
    roles = ["head"] * heads + ["worker"] * (2 - heads)
    pools = [_pool("a", ("s-0", roles[0])), _pool("b", ("s-1", roles[1]))]
    with pytest.raises(helm.HelmError, match="exactly one stage must have role head"):
        render(merged({"pools": pools, "manifest": {"signed": "", "existingSecret": "mine"}}))


def test_api_service_selects_the_head_stage():
    docs = render(merged())
    api = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-api"))
    assert api["spec"]["selector"]["conclave.dev/stage"] == "stage-0"
    selected = [d for d in by_kind(docs, "StatefulSet")
                if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                       for k, v in api["spec"]["selector"].items())]
    assert [d["metadata"]["labels"]["conclave.dev/role"] for d in selected] == ["head"]


def _leaf_paths(node, prefix=""):
    if isinstance(node, dict) and node and prefix.count(".") < 2:
        for k, v in node.items():
            yield from _leaf_paths(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def test_every_value_is_documented():
    """Each value (to depth 3) appears in helm/README.md and has a comment in values.yaml."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = README.read_text()
    paths = [p for p in _leaf_paths(defaults) if not p.startswith("pools")]
    paths += [f"pools[].{k}" for k in defaults["pools"][0]]
    paths += [f"pools[].stages[].{k}" for k in defaults["pools"][0]["stages"][0]]
    undocumented = [p for p in paths if f"`{p}`" not in readme]
    assert undocumented == []
    # values.yaml: every key at indent 0 or 2 outside the pools example is preceded by a comment.
    lines = (CHART / "values.yaml").read_text().splitlines()
    in_pools = False
    for i, line in enumerate(lines):
        if re.match(r"^[a-zA-Z]", line):
            in_pools = line.startswith("pools:")
        m = re.match(r"^( {0,2})([a-zA-Z][A-Za-z0-9]*):", line)
        if not m or in_pools:
            continue
        previous = lines[i - 1].strip()
        assert previous.startswith("#"), f"values.yaml line {i + 1} has no comment: {line}"


def test_host_network_pool_with_configfs_is_valid_kubernetes():
    pools = [{"name": "vm-node", "stages": [{"name": "stage-0", "role": "head"}],
              "runtimeClassName": "cvm-node",
              "nodeSelector": {"conclave.dev/owner": "vm"}, "hostNetwork": True, "gpusPerPod": 2}]
    docs = render(merged({"pools": pools, "agent": {"configfsTsm": True, "tunDevice": False},
                          "manifest": {"signed": "", "existingSecret": "mine"}}))
    ds = by_kind(docs, "StatefulSet")[0]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {v["name"] for v in spec["volumes"]} >= {"configfs", "manifest"}
    assert "tun" not in {v["name"] for v in spec["volumes"]}
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _cli_args(container: dict) -> list[str]:
    args = []
    for arg in container["args"]:
        for placeholder, value in ENV_PLACEHOLDERS.items():
            arg = arg.replace(placeholder, value)
        assert "$(" not in arg, f"unexpanded variable in {arg!r}"
        args.append(arg)
    return args


def _parse_with_real_cli(args: list[str]):
    """Every flag the chart passes must exist in `conclave` (argparse exits on an unknown one)."""
    from conclave.runtime.cli import build_parser
    try:
        return build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"the conclave CLI rejects the chart's args {args}: exit {exc.code}")


@pytest.mark.parametrize("listen", ["overlay", "pod"])
def test_rendered_agent_args_are_accepted_by_the_cli(listen):
    docs = render(merged({"agent": {"metrics": {"port": 9469, "listen": listen},
                                    "maxEvidenceAge": 900, "extraArgs": ["--reconcile-interval=3"]}}))
    for ds in by_kind(docs, "StatefulSet"):
        parsed = _parse_with_real_cli(_cli_args(ds["spec"]["template"]["spec"]["containers"][0]))
        assert parsed.command == "node"
        assert str(parsed.manifest) == "/etc/conclave/manifest.json"
        assert parsed.owner_fingerprint == OWNER_FINGERPRINT
        assert not hasattr(parsed, "manifest_digest") and not hasattr(parsed, "policy")  # no unsigned path
        assert parsed.underlay_host == ENV_PLACEHOLDERS["$(POD_IP)"]
        assert parsed.max_evidence_age == 900 and parsed.reconcile_interval == 3
        assert parsed.rendezvous == ["demo-conclave-rendezvous:51822"]
        assert parsed.metrics_host == (ENV_PLACEHOLDERS["$(POD_IP)"] if listen == "pod" else None)


def test_every_agent_takes_its_owners_enrolment_on_a_status_socket_in_its_own_memory():
    """The pool's owner enrols each pod over one known socket (README's kubectl exec); it lies on the
    pod's memory volume, so nothing of it reaches the host's disk."""
    socket = "/run/conclave/status.sock"
    assert socket in README.read_text() and "conclave owner enroll" in README.read_text()
    stateful_sets = by_kind(render(merged()), "StatefulSet")
    assert len(stateful_sets) == 2
    for ds in stateful_sets:
        spec = ds["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert str(_parse_with_real_cli(_cli_args(container)).status_socket) == socket
        run = next(m for m in container["volumeMounts"] if socket.startswith(m["mountPath"] + "/"))
        volume = next(v for v in spec["volumes"] if v["name"] == run["name"])
        assert volume == {"name": run["name"], "emptyDir": {"medium": "Memory"}}


def test_default_overlay_range_is_the_signed_manifests():
    """A node outside the manifest's overlay_cidr is refused by its peers, the broker and its owner's
    enrolment (overlay_address_out_of_range): the chart's default must be the manifest's default."""
    from conclave.runtime.manifest.document import DEFAULT_OVERLAY_CIDR
    for ds in by_kind(render(merged()), "StatefulSet"):
        parsed = _parse_with_real_cli(_cli_args(ds["spec"]["template"]["spec"]["containers"][0]))
        assert parsed.overlay_cidr == DEFAULT_OVERLAY_CIDR


def test_rendered_rendezvous_args_are_accepted_by_the_cli():
    docs = render(merged({"rendezvous": {"port": 6000, "extraArgs": ["--ttl", "120"]}}))
    deployment = next(d for d in by_kind(docs, "Deployment")
                      if d["metadata"]["labels"]["app.kubernetes.io/component"] == "rendezvous")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    parsed = _parse_with_real_cli(_cli_args(container))
    assert parsed.command == "rendezvous"
    # all pod interfaces (the Service fronts it), on the port the Service and probe use
    assert parsed.host == "0.0.0.0" and parsed.port == 6000 and parsed.ttl == 120
    assert container["ports"][0]["containerPort"] == 6000
    service = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-rendezvous"))
    assert service["spec"]["ports"][0]["port"] == 6000


# ------------------------------------------------------------ stage names from the manifest ---
def _agent_containers(docs: list[dict]) -> list[dict]:
    return [d["spec"]["template"]["spec"]["containers"][0] for d in by_kind(docs, "StatefulSet")]


def test_every_rendered_agent_boots_on_its_manifest_stage(tmp_path):
    """The node's own boot check (require_manifest with the parsed args) accepts every pod's
    stage, and the pod's owner and role are the ones the owner signed for that stage."""
    signed, digest = signed_manifest(MANIFEST_STAGES + (Stage("stage-2", "owner-b", "worker", 30, 31),))
    pools = [_pool("owner-a", ("stage-0", "head")),
             _pool("owner-b", ("stage-1", "worker"), ("stage-2", "worker"))]
    docs = render(merged({"pools": pools, "manifest": {"signed": signed, "digest": digest}}))
    path = tmp_path / "manifest.json"
    path.write_text(by_kind(docs, "Secret")[0]["stringData"]["manifest.json"])
    booted = {}
    for container in _agent_containers(docs):
        parsed = _parse_with_real_cli(_cli_args(container))
        manifest = require_manifest(path, trusted_owner=parsed.owner_fingerprint, node=parsed.stage_name)
        stage = manifest.stage_for(parsed.stage_name)
        assert (stage.owner, stage.role) == (parsed.owner, parsed.role)
        assert parsed.name == parsed.stage_name
        booted[parsed.stage_name] = parsed.owner
    assert booted == {"stage-0": "owner-a", "stage-1": "owner-b", "stage-2": "owner-b"}
    # one pool, two stages: two single-pod StatefulSets behind the pool's one headless Service
    b_sets = [d for d in by_kind(docs, "StatefulSet") if d["metadata"]["labels"]["conclave.dev/pool"] == "owner-b"]
    assert sorted(d["metadata"]["name"] for d in b_sets) == ["demo-conclave-stage-1", "demo-conclave-stage-2"]
    assert {d["spec"]["serviceName"] for d in b_sets} == {"demo-conclave-owner-b"}
    for doc in docs:
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("pools, message", [
    ([_pool("owner-a", ("stage-0", "head")), _pool("owner-b", ("stage-9", "worker"))],
     "is not a stage of the signed manifest"),
    ([_pool("owner-a", ("stage-0", "head"), ("stage-1", "worker"))],       # owner-b's stage
     "the signed manifest gives owner"),
    ([_pool("owner-a", ("stage-0", "head")), _pool("owner-b", ("stage-1", "head"))],
     "exactly one stage must have role head"),
    ([_pool("owner-a", ("stage-0", "worker")), _pool("owner-b", ("stage-1", "head"))],
     "the signed manifest gives role"),
    ([_pool("owner-a", ("stage-0", "head")), _pool("owner-b", ("stage-0", "worker"))],
     "is listed twice"),
])
def test_stages_that_disagree_with_the_signed_manifest_fail_rendering(pools, message):
    with pytest.raises(helm.HelmError, match=message):
        render(merged({"pools": pools}))


def test_signed_manifest_must_be_a_manifest():
    with pytest.raises(helm.HelmError, match="is not a signed manifest"):
        render(merged({"manifest": {"signed": '{"content": {}, "signature": "x"}'}}))
    with pytest.raises(helm.HelmError, match="is not a signed manifest"):
        render(merged({"manifest": {"signed": "not json"}}))


def test_existing_secret_renders_stages_from_values_alone():
    """The chart cannot read an existing Secret: values are used as given (the node still
    refuses a stage its verified manifest lacks); duplicates are still refused."""
    pools = [_pool("owner-a", ("stage-x", "head"))]
    docs = render(merged({"pools": pools, "manifest": {"signed": "", "existingSecret": "mine"}}))
    [container] = _agent_containers(docs)
    assert "--stage-name=stage-x" in container["args"]
    with pytest.raises(helm.HelmError, match="is listed twice"):
        render(merged({"pools": [_pool("a", ("s", "head")), _pool("b", ("s", "worker"))],
                       "manifest": {"signed": "", "existingSecret": "mine"}}))


def test_stage_node_selector_is_merged_over_the_pools():
    pools = [_pool("owner-a", ("stage-0", "head")), _pool("owner-b", ("stage-1", "worker"))]
    pools[1]["stages"][0]["nodeSelector"] = {"kubernetes.io/hostname": "gpu-7"}
    docs = render(merged({"pools": pools}))
    selectors = {d["metadata"]["labels"]["conclave.dev/stage"]: d["spec"]["template"]["spec"]["nodeSelector"]
                 for d in by_kind(docs, "StatefulSet")}
    assert selectors == {"stage-0": {"conclave.dev/owner": "owner-a"},
                         "stage-1": {"conclave.dev/owner": "owner-b", "kubernetes.io/hostname": "gpu-7"}}


def test_overlong_workload_name_is_refused_not_truncated():
    long_stage = "s" * 40  # demo-conclave- (14) + 40 > 52
    signed, digest = signed_manifest((Stage(long_stage, "owner-a", "head", 0, 30),))
    with pytest.raises(helm.HelmError, match="longer than 52 characters"):
        render(merged({"pools": [_pool("owner-a", (long_stage, "head"))],
                       "manifest": {"signed": signed, "digest": digest}}))
