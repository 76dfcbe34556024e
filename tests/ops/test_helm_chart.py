"""helm/conclave: rendered by real Helm (v4 Go SDK via helm-python-sdk), linted, values checked
against values.schema.json, every rendered object validated against the Kubernetes API schemas
(kubernetes-validate). What is NOT checked here: installing into a cluster, the ServiceMonitor
against the Prometheus Operator CRD schema (checked structurally only)."""
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

CHART = Path(__file__).resolve().parents[2] / "helm" / "conclave"
README = CHART.parent / "README.md"
K8S_VERSION = "1.30.0"

INSTALL_VALUES = {
    "image": {"digest": "sha256:" + "a" * 64},
    "manifest": {"signed": '{"content": {}, "signature": "x"}', "digest": "b" * 64,
                 "policy": {"production": True, "allowed_tee": ["tdx"],
                            "tdx": {"mr_td": ["c" * 96]}}},
    "ownerFingerprint": "d" * 64,
}


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
    {"pools": [{"name": "a", "role": "boss", "runtimeClassName": "x", "nodeSelector": {"a": "b"}}]},
    {"pools": [{"name": "a", "role": "head", "runtimeClassName": "x", "nodeSelector": {}}]},
    {"agent": {"metrics": {"port": 9469, "listen": "0.0.0.0"}}},
    {"unknownKey": 1},
])
def test_schema_rejects_bad_values_in_helm(bad):
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError):
            chart.validate_schema(merged(bad))


def test_rendered_objects_are_valid_kubernetes():
    docs = render(merged({"serviceMonitor": {"enabled": True},
                          "agent": {"metrics": {"port": 9469, "listen": "pod"}}}))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["DaemonSet", "DaemonSet", "Service", "Service", "Service", "Service",
                            "Deployment", "Secret", "ServiceAccount", "ServiceMonitor"])
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD: no bundled schema; checked below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_one_daemonset_per_pool_in_a_cvm_with_wireguard_rights():
    docs = render(merged())
    sets = {d["metadata"]["labels"]["conclave.dev/pool"]: d for d in by_kind(docs, "DaemonSet")}
    assert set(sets) == {"owner-a", "owner-b"}
    for pool, ds in sets.items():
        spec = ds["spec"]["template"]["spec"]
        assert spec["runtimeClassName"].startswith("kata-qemu-")
        assert spec["nodeSelector"] == {"conclave.dev/owner": pool}
        container = spec["containers"][0]
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"],
                                                                  "add": ["NET_ADMIN"]}
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "@sha256:" in container["image"]
        tun = next(v for v in spec["volumes"] if v["name"] == "tun")
        assert tun["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
        args = container["args"]
        assert args[0] == "node" and f"--owner={pool}" in args
        assert "--manifest-digest=" + "b" * 64 in args
    roles = {p: ds["metadata"]["labels"]["conclave.dev/role"] for p, ds in sets.items()}
    assert roles == {"owner-a": "head", "owner-b": "worker"}


def test_secret_carries_manifest_and_policy():
    secret = by_kind(render(merged()), "Secret")[0]
    assert secret["stringData"]["manifest.json"] == INSTALL_VALUES["manifest"]["signed"]
    assert yaml.safe_load(secret["stringData"]["policy.yaml"]) == INSTALL_VALUES["manifest"]["policy"]


def test_existing_secret_replaces_generated_one():
    docs = render(merged({"manifest": {"existingSecret": "mine", "signed": "", "policy": {}}}))
    assert by_kind(docs, "Secret") == []
    ds = by_kind(docs, "DaemonSet")[0]
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
    ds = by_kind(docs, "DaemonSet")[0]
    assert "--metrics-host=$(POD_IP)" in ds["spec"]["template"]["spec"]["containers"][0]["args"]


def test_service_monitor_without_reachable_metrics_fails():
    with pytest.raises(helm.HelmError):
        render(merged({"serviceMonitor": {"enabled": True}}))  # metrics on the overlay only


@pytest.mark.parametrize("missing", ["image.digest", "manifest.digest", "ownerFingerprint",
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


def test_exactly_one_head_pool():
    two_heads = [{"name": n, "role": "head", "runtimeClassName": "kata-qemu-tdx",
                  "nodeSelector": {"o": n}} for n in ("a", "b")]
    with pytest.raises(helm.HelmError):
        render(merged({"pools": two_heads}))


def test_api_service_selects_the_head_pool():
    api = next(s for s in by_kind(render(merged()), "Service")
               if s["metadata"]["name"].endswith("-api"))
    assert api["spec"]["selector"]["conclave.dev/pool"] == "owner-a"


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
    pools = [{"name": "vm-node", "role": "head", "runtimeClassName": "cvm-node",
              "nodeSelector": {"conclave.dev/owner": "vm"}, "hostNetwork": True, "gpusPerPod": 2}]
    docs = render(merged({"pools": pools, "agent": {"configfsTsm": True, "tunDevice": False}}))
    ds = by_kind(docs, "DaemonSet")[0]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {v["name"] for v in spec["volumes"]} >= {"configfs", "manifest"}
    assert "tun" not in {v["name"] for v in spec["volumes"]}
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
