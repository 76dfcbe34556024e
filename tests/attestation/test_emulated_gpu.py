"""Emulated H100s (runtime/attestation/emulated/nvgpu_device.py): per-host device dirs, evidence over the
node's derived nonce, RIMs from the emulated RIM service, OCSP from the emulated responder, the
switches (no GPU, CC off, a measurement outside its RIM) and replay of one host's evidence by another,
all through the production verifiers (nvgpu, nvgpu_rim, ocsp, nvgpu_requirement, admission)."""
from __future__ import annotations

import ipaddress
import json
import stat
from datetime import datetime, timezone

import pytest

from conclave.overlay.admission import AdmissionRejected, Verifier
from conclave.overlay.prover import answer_challenge
from conclave.overlay.evidence import NodeEvidenceSource
from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.nonces import NonceCache
from conclave.runtime import attestation
from conclave.runtime.attestation import binding, collect
from conclave.runtime.attestation.core import Reason, TeeType
from conclave.runtime.attestation.emulated import nvgpu_device as emu
from conclave.runtime.attestation.nvgpu_collateral_source import GpuCollateralSource
from conclave.runtime.attestation.nvgpu_requirement import GpuRequirement, check_gpus
from conclave.runtime.attestation.ocsp_fetch import OcspFetcher
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.rim_service import RimService
from conclave.runtime.attestation.sim import SimulatedRoot

H100 = GpuRequirement.from_json({"count": 1, "models": ["H100"], "cc_mode": True})
REPORT_DATA = bytes(range(64))


@pytest.fixture(scope="module")
def authority():
    return emu.GpuAuthority.generate()


@pytest.fixture(scope="module")
def services(authority):
    with authority.running_services() as running:
        yield running


@pytest.fixture()
def hosts(authority, tmp_path):
    a = tmp_path / "host-a"
    b = tmp_path / "host-b"
    authority.provision(a, 1)
    authority.provision(b, 2, count=2)
    return a, b


def _gpu_source(authority, services, **kw) -> GpuCollateralSource:
    rims, responder = services
    return GpuCollateralSource(rim_service=RimService(rims.base_url, **kw), ocsp_fetcher=OcspFetcher(responder.url),
                               device_roots=[authority.device_root], rim_roots=[authority.rim_root])


def _verify(authority, data: bytes, nonce: bytes, collateral):
    return attestation.verify_evidence(data, tee=TeeType.NVGPU, at=datetime.now(timezone.utc), collateral=collateral,
                                       nonce=nonce, trusted_roots=[authority.device_root],
                                       rim_roots=[authority.rim_root])


def _collect(host, report_data=REPORT_DATA) -> tuple[bytes | None, bytes]:
    nonce = binding.gpu_nonce_for(report_data)
    return emu.EmulatedGpuSource(host).collect(nonce), nonce


def test_device_dir_layout_and_key_mode(hosts):
    a, b = hosts
    assert [p.name for p in emu.gpu_dirs(a)] == ["gpu0"] and [p.name for p in emu.gpu_dirs(b)] == ["gpu0", "gpu1"]
    assert stat.S_IMODE((a / "gpu0" / emu.KEY_FILE).stat().st_mode) == 0o600
    chain = (a / "gpu0" / emu.CHAIN_FILE).read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 5   # leaf, BROM, ICA, Identity, root: NVIDIA's depth
    serials = {s["serial"] for h in hosts for s in emu.gpu_summary(h)}
    assert len(serials) == 3 and None not in serials


def test_evidence_verifies_with_rims_and_ocsp_and_satisfies_an_h100_stage(authority, services, hosts):
    data, nonce = _collect(hosts[0])
    collateral = _gpu_source(authority, services).collateral_for(TeeType.NVGPU, data)
    verified = _verify(authority, data, nonce, collateral)
    assert verified.claims["rim_validated"] is True and verified.claims["gpu_chip"] == "GH100"
    assert verified.revocation_checked is True
    assert verified.report_data == nonce
    assert check_gpus(H100, [verified]) == []
    assert [s.step for s in verified.steps if not s.ok] == []


def test_two_gpus_are_one_evidence_list_and_both_count(authority, services, hosts):
    data, nonce = _collect(hosts[1])
    assert len(json.loads(data)) == 2
    verified = _verify(authority, data, nonce, _gpu_source(authority, services).collateral_for(TeeType.NVGPU, data))
    assert check_gpus(GpuRequirement(count=2, models=("H100",)), [verified]) == []
    assert [v.reason for v in check_gpus(GpuRequirement(count=3), [verified])] == [Reason.GPU_MISSING]


def test_the_nvidia_pinned_roots_refuse_the_emulated_hierarchy(services, hosts):
    data, nonce = _collect(hosts[0])
    with pytest.raises(attestation.VerificationFailed) as err:
        attestation.verify_evidence(data, tee=TeeType.NVGPU, at=datetime.now(timezone.utc), nonce=nonce)
    assert err.value.reason == Reason.CHAIN_UNTRUSTED


def test_no_gpu_switch_presents_nothing_and_the_stage_is_gpu_missing(hosts):
    a, _ = hosts
    emu.set_switches(a / "gpu0", present=False)
    assert _collect(a)[0] is None
    root = SimulatedRoot.generate()
    node = NodeEvidenceSource(collect.SimulatedSource(root.issue_attester("n", measurement=b"\x01" * 48)),
                              [emu.EmulatedGpuSource(a)])
    assert [i.tee for i in node.collect(REPORT_DATA)] == [TeeType.SIM]
    assert [v.reason for v in check_gpus(H100, [])] == [Reason.GPU_MISSING]
    emu.set_switches(a / "gpu0", present=True)   # switches are read at every collection
    assert [i.tee for i in node.collect(REPORT_DATA)] == [TeeType.SIM, TeeType.NVGPU]


def test_cc_off_is_gpu_cc_off_at_the_index_the_rim_names_cc_mode(authority, services, hosts):
    """The emulated VBIOS RIM names CC_CONFIG_INDEX as the CC-mode configuration: a mismatch there
    alone is gpu_cc_off (still a RimMismatch naming the index); another mismatched index beside it
    keeps the general rim_mismatch."""
    from conclave.runtime.attestation.nvgpu_rim import RimMismatch
    a, _ = hosts
    emu.set_switches(a / "gpu0", cc_mode=False)
    data, nonce = _collect(a)
    source = _gpu_source(authority, services)
    with pytest.raises(RimMismatch) as err:
        _verify(authority, data, nonce, source.collateral_for(TeeType.NVGPU, data))
    assert err.value.reason == Reason.GPU_CC_OFF and err.value.indices == [emu.CC_CONFIG_INDEX]
    emu.set_switches(a / "gpu0", tamper_index=6)
    data, nonce = _collect(a)
    with pytest.raises(RimMismatch) as err:
        _verify(authority, data, nonce, source.collateral_for(TeeType.NVGPU, data))
    assert err.value.reason == Reason.RIM_MISMATCH and err.value.indices == [emu.CC_CONFIG_INDEX, 6]


def test_authority_round_trips_as_bytes_and_its_services_state_holds_no_signer(authority, services, hosts,
                                                                              tmp_path):
    """Local mode keeps the authority 0600 (gpu-authority.key) and hands the NVIDIA services process
    only the signed RIMs and the OCSP issuers: a restored authority provisions GPUs the same roots
    accept, and the services started from that state serve what the verifier needs."""
    from conclave.runtime.attestation.emulated import service
    restored = emu.GpuAuthority.from_secret_bytes(authority.to_secret_bytes())
    assert restored.device_root == authority.device_root and restored.rim_root == authority.rim_root
    assert "PRIVATE" not in repr(restored) and "redacted" in repr(restored)
    host = tmp_path / "late-host"
    restored.provision(host, 9)
    state = authority.service_state()
    assert b"signer_key" not in state and b"root_key" not in state
    nvidia = service.start_vendor("nvidia", state, "127.0.0.1", 0)
    try:
        data, nonce = _collect(host)
        source = GpuCollateralSource(rim_service=RimService(nvidia.base_url), ocsp_fetcher=OcspFetcher(nvidia.ocsp_url),
                                     device_roots=[authority.device_root], rim_roots=[authority.rim_root])
        verified = _verify(authority, data, nonce, source.collateral_for(TeeType.NVGPU, data))
        assert verified.claims["rim_validated"] is True and verified.revocation_checked is True
        assert service.control(nvidia, {"cmd": "down"}) == {"ok": True} and nvidia.down
        assert service.control(nvidia, {"cmd": "status"})["down"] is True
        assert service.control(nvidia, {"cmd": "revoke", "host": "x"})["reason"] == "unsupported"
    finally:
        nvidia.stop()
    with pytest.raises(ValueError):
        emu.GpuAuthority.from_secret_bytes(b'{"format": "something else"}')
    with pytest.raises(ValueError):
        service.start_vendor("nvidia", b'{"format": "conclave-emulated-nvidia-services/v1"}', "127.0.0.1", 0)


def test_cc_off_without_rim_validation_is_gpu_cc_off(authority, services, hosts):
    a, _ = hosts
    emu.set_switches(a / "gpu0", cc_mode=False)
    data, nonce = _collect(a)
    _rims, responder = services
    no_rims = GpuCollateralSource(ocsp_fetcher=OcspFetcher(responder.url), device_roots=[authority.device_root])
    verified = _verify(authority, data, nonce, no_rims.collateral_for(TeeType.NVGPU, data))
    assert [v.reason for v in check_gpus(H100, [verified])] == [Reason.GPU_CC_OFF]
    policy = Policy.from_dict({"production": True, "allowed_tee": ["nvgpu"], "nvgpu": {"require_rim": True}})
    from conclave.runtime.attestation.policy import violations
    assert [v.reason for v in violations(verified, policy)] == [Reason.RIM_MISSING]


def test_measurement_outside_its_rim_is_rim_mismatch_and_restoring_heals(authority, services, hosts):
    a, _ = hosts
    emu.set_switches(a / "gpu0", tamper_index=6)
    data, nonce = _collect(a)
    source = _gpu_source(authority, services)
    with pytest.raises(attestation.VerificationFailed) as err:
        _verify(authority, data, nonce, source.collateral_for(TeeType.NVGPU, data))
    assert err.value.reason == Reason.RIM_MISMATCH and "[6]" in err.value.message   # the SPDM block
    emu.set_switches(a / "gpu0", tamper_index=None)
    data, nonce = _collect(a)
    assert _verify(authority, data, nonce, source.collateral_for(TeeType.NVGPU, data)).claims["rim_validated"]


def test_switches_refuse_garbage(hosts):
    a, _ = hosts
    with pytest.raises(ValueError):
        emu.set_switches(a / "gpu0", tamper_index=99)
    (a / "gpu0" / emu.SWITCHES_FILE).write_text('{"present": true}')
    with pytest.raises(collect.CollectionError) as err:
        _collect(a)
    assert err.value.reason == "gpu_device_invalid"


def test_node_cli_builds_the_emulated_gpu_source(hosts, tmp_path):
    from types import SimpleNamespace
    from conclave.runtime.cli import node as node_cli
    from conclave.runtime.errors import UsageError
    (src,) = node_cli.gpu_sources(SimpleNamespace(gpu_evidence="emulated", gpu_device_dir=hosts[0]))
    assert isinstance(src, emu.EmulatedGpuSource) and src.tee == TeeType.NVGPU
    for bad in (None, tmp_path / "empty"):
        with pytest.raises(UsageError) as err:
            node_cli.gpu_sources(SimpleNamespace(gpu_evidence="emulated", gpu_device_dir=bad))
        assert err.value.reason == "gpu_device_invalid"
    assert node_cli.gpu_sources(SimpleNamespace(gpu_evidence="none")) == []


# --- admission: one host's GPU evidence replayed by another is refused ------------------------------------

GOOD = bytes.fromhex("ab" * 48)
NET = ipaddress.IPv4Network("100.64.0.0/16")
DIGEST = b"\x42" * 32


class ReplayingGpu:
    """A host without its own GPU that presents GPU evidence recorded from another host."""

    tee = TeeType.NVGPU

    def __init__(self, recorded: bytes):
        self.recorded = recorded

    def collect(self, nonce: bytes) -> bytes:
        return self.recorded


def _admission(root, authority, name, gpus):
    ident = NodeIdentity.generate()
    ann = Announcement(node_id=name, owner="o", role=Role.WORKER, underlay_host="198.19.0.7",
                       admission_port=51821, wireguard_port=51820, wg_public_key=ident.wg_public,
                       hpke_public_key=ident.hpke_public, overlay_address=ipaddress.IPv4Address("100.64.0.7"))
    src = NodeEvidenceSource(collect.SimulatedSource(root.issue_attester(name, measurement=GOOD)), gpus)
    policy = Policy.from_dict({"production": False, "allowed_tee": ["sim", "nvgpu"], "unsafe_allow_simulated": True,
                               "sim": {"measurement": [GOOD.hex()]},
                               "nvgpu": {"measurements": {"1": [emu.golden_measurements()[1].hex()]}}})
    verifier = Verifier(policy=policy, manifest_digest=DIGEST, overlay=NET, trusted_sim_roots=[root.certificate],
                        gpu_roots=[authority.device_root],
                        gpu_requirement_for=lambda node: GpuRequirement(count=1, models=("H100",), cc_mode=False))
    nonces = NonceCache()
    reply = answer_challenge(me=ann, source=src, manifest_digest=DIGEST, nonce=nonces.issue(name))
    return lambda: verifier.admit(challenged=ann, reply=reply, nonces=nonces)


def test_gpu_evidence_of_one_host_replayed_by_another_is_refused(authority, hosts):
    a, b = hosts
    root = SimulatedRoot.generate()
    honest = _admission(root, authority, "host-a", [emu.EmulatedGpuSource(a)])
    assert honest().announcement.node_id == "host-a"
    recorded, _ = _collect(a, REPORT_DATA)   # host A's GPU evidence for one of its challenges
    replay = _admission(root, authority, "host-b", [ReplayingGpu(recorded)])
    with pytest.raises(AdmissionRejected) as err:
        replay()
    assert err.value.reason == Reason.NONCE_MISMATCH


# --- the node's own verifier: policy test roots, its GPU collateral cache, the manifest's `gpus` -----------

def _pem(cert) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding
    return cert.public_bytes(Encoding.PEM).decode()


def _node_verifier(authority, services, tmp_path, root, requirement_for=None):
    from conclave.runtime.agent.verifier import VendorServices, make_verifier
    rims, responder = services
    policy = Policy.from_dict({"production": False, "allowed_tee": ["sim", "nvgpu"], "unsafe_allow_simulated": True,
                               "sim": {"measurement": [GOOD.hex()]}, "nvgpu": {"require_rim": True},
                               "unsafe_test_roots": {"nvgpu": [_pem(authority.device_root)],
                                                     "nvgpu_rim": [_pem(authority.rim_root)]}})
    v = make_verifier(policy=policy, manifest_digest=DIGEST, overlay=NET, trusted_sim_roots=[root.certificate],
                      services=VendorServices(rim=rims.base_url, nvidia_ocsp=responder.url),
                      collateral_dir=tmp_path / "collateral")
    v.gpu_requirement_for = requirement_for
    return v


def _reply(root, name, gpus):
    ident = NodeIdentity.generate()
    ann = Announcement(node_id=name, owner="o", role=Role.WORKER, underlay_host="198.19.0.7",
                       admission_port=51821, wireguard_port=51820, wg_public_key=ident.wg_public,
                       hpke_public_key=ident.hpke_public, overlay_address=ipaddress.IPv4Address("100.64.0.7"))
    src = NodeEvidenceSource(collect.SimulatedSource(root.issue_attester(name, measurement=GOOD)), gpus)
    nonces = NonceCache()
    reply = answer_challenge(me=ann, source=src, manifest_digest=DIGEST, nonce=nonces.issue(name))
    return ann, reply, nonces


def test_node_verifier_validates_rims_it_fetched_itself_with_the_policys_test_roots(authority, services, hosts,
                                                                                     tmp_path):
    root = SimulatedRoot.generate()
    v = _node_verifier(authority, services, tmp_path, root, requirement_for=lambda node: H100)
    assert v.gpu_roots == (authority.device_root,) and v.rim_roots == (authority.rim_root,)
    ann, reply, nonces = _reply(root, "host-a", [emu.EmulatedGpuSource(hosts[0])])
    assert v.admit(challenged=ann, reply=reply, nonces=nonces).announcement.node_id == "host-a"
    assert list((tmp_path / "collateral" / "nvgpu").glob("test-*/rims/*"))   # fetched from the RIM service, cached
    emu.set_switches(hosts[0] / "gpu0", tamper_index=2)
    ann, reply, nonces = _reply(root, "host-a", [emu.EmulatedGpuSource(hosts[0])])
    with pytest.raises(AdmissionRejected) as err:
        v.admit(challenged=ann, reply=reply, nonces=nonces)
    assert err.value.reason == Reason.RIM_MISMATCH


def test_node_verifier_takes_each_stages_gpus_from_the_bound_manifest(authority, services, hosts, tmp_path):
    from types import SimpleNamespace
    root = SimulatedRoot.generate()
    v = _node_verifier(authority, services, tmp_path, root)
    stages = {"host-a": SimpleNamespace(node="host-a", role="worker", gpus=H100)}
    v.manifest = SimpleNamespace(digest=DIGEST, stage_for=stages.get)
    ann, reply, nonces = _reply(root, "host-a", [emu.EmulatedGpuSource(hosts[0])])
    assert v.admit(challenged=ann, reply=reply, nonces=nonces, enrolment_optional=True)
    emu.set_switches(hosts[0] / "gpu0", present=False)
    ann, reply, nonces = _reply(root, "host-a", [emu.EmulatedGpuSource(hosts[0])])
    with pytest.raises(AdmissionRejected) as err:
        v.admit(challenged=ann, reply=reply, nonces=nonces, enrolment_optional=True)
    assert err.value.reason == Reason.GPU_MISSING


def test_production_policy_refuses_nvgpu_test_roots(authority):
    from conclave.runtime.attestation.core import PolicyError
    for key, cert in (("nvgpu", authority.device_root), ("nvgpu_rim", authority.rim_root)):
        with pytest.raises(PolicyError) as err:
            Policy.from_dict({"production": True, "allowed_tee": ["nvgpu"], "nvgpu": {"require_rim": True},
                              "unsafe_test_roots": {key: [_pem(cert)]}})
        assert err.value.reason == Reason.POLICY_INVALID
    with pytest.raises(PolicyError):
        Policy.from_dict({"production": False, "allowed_tee": ["nvgpu"], "nvgpu": {"require_rim": True},
                          "unsafe_test_roots": {"nvgpu_rim": ["-----BEGIN CERTIFICATE-----garbage"]}})


def test_one_client_cache_serves_two_emulated_clusters(authority, services, hosts, tmp_path):
    """Every emulated cluster publishes its RIMs under the same ids, signed by its own test RIM root: a
    client's collateral cache shared by two clusters must keep them apart (before, the second cluster's
    GPUs failed rim_invalid with the first cluster's cached RIMs)."""
    from conclave.runtime.agent.verifier import VendorServices, gpu_collateral_source
    other = emu.GpuAuthority.generate()
    other_host = tmp_path / "other-host"
    other.provision(other_host, 5)
    folder = tmp_path / "client-cache"
    with other.running_services() as (other_rims, other_responder):
        for auth, host, (rims, responder) in ((authority, hosts[0], services),
                                              (other, other_host, (other_rims, other_responder))):
            policy = Policy.from_dict({"production": False, "allowed_tee": ["nvgpu"], "nvgpu": {"require_rim": True},
                                       "unsafe_test_roots": {"nvgpu": [_pem(auth.device_root)],
                                                             "nvgpu_rim": [_pem(auth.rim_root)]}})
            source = gpu_collateral_source(folder, VendorServices(rim=rims.base_url, nvidia_ocsp=responder.url), policy)
            data, nonce = _collect(host)
            verified = _verify(auth, data, nonce, source.collateral_for(TeeType.NVGPU, data))
            assert verified.claims["rim_validated"] is True and verified.revocation_checked is True
    assert len(list((folder / "nvgpu").glob("test-*"))) == 2
