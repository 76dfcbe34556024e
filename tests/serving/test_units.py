"""Pure pieces of the serving path: partitions, addresses, the platform plugin, the network seam."""
from __future__ import annotations

import importlib.metadata
import ipaddress

import pytest

from conclave.runtime import netns
from conclave.runtime.errors import ConclaveError, UsageError
from conclave.runtime.local import hosts as local_hosts
from conclave.runtime.serving import cpu_platform
from conclave.runtime.node import engine
from conclave.runtime.node import ray_cluster
from conclave.runtime.local.network import ClusterAddress, Host, NetworkLayer, PlainVethNetwork


# -- partitions --------------------------------------------------------------------------------
def test_parse_partition_accepts_exact_split():
    assert engine.parse_partition("10,12,8", 3, 30) == (10, 12, 8)
    assert engine.parse_partition(None, 3, 30) is None


@pytest.mark.parametrize("text", ["10,10", "10,10,11", "a,b,c", "0,15,15", "-1,16,15", "10,,20"])
def test_parse_partition_rejects_bad_input(text):
    with pytest.raises(UsageError) as info:
        engine.parse_partition(text, 3, 30)
    assert info.value.reason == "bad_partition"


@pytest.mark.parametrize("layers,stages", [(30, 1), (30, 2), (30, 3), (30, 4), (30, 7), (5, 5)])
def test_stage_ranges_match_vllm(layers, stages):
    from vllm.distributed.utils import get_pp_indices
    ours = engine.stage_layer_ranges(layers, stages, None)
    assert ours == [get_pp_indices(layers, rank, stages) for rank in range(stages)]


def test_stage_ranges_follow_explicit_partition():
    assert engine.stage_layer_ranges(30, 3, (5, 20, 5)) == [(0, 5), (5, 25), (25, 30)]


def test_engine_modes():
    head = ClusterAddress("198.18.0.1", "eth0")
    one = engine.engine_argv(engine.EngineSpec("/m", "smollm2", 1, "float32"), head)
    three = engine.engine_argv(engine.EngineSpec("/m", "smollm2", 3, "float32"), head)
    assert "--enforce-eager" in one and "--enforce-eager" not in three
    assert three[three.index("--distributed-executor-backend") + 1] == "ray"
    assert three[three.index("--pipeline-parallel-size") + 1] == "3"
    env = engine.engine_env(engine.EngineSpec("/m", "smollm2", 3, "float32", partition=(10, 10, 10)), head, "key")
    # The Ray token is added only by the network layer (plain: in memory; attested: by the node agent).
    assert env["VLLM_API_KEY"] == "key" and "RAY_AUTH_TOKEN" not in env and env["RAY_AUTH_MODE"] == "token"
    assert env["VLLM_PP_LAYER_PARTITION"] == "10,10,10"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env
    assert "key" not in three and "tok" not in three


def test_omp_binds():
    assert ray_cluster.omp_binds(1, 2) == ["0-1"]
    assert ray_cluster.omp_binds(3, 2) == ["0", "1", "0"]


# -- hosts ---------------------------------------------------------------------------------------
def test_pick_subnet_avoids_used_routes():
    pool = ipaddress.IPv4Network("198.18.0.0/15")
    used = [ipaddress.IPv4Network("198.19.255.0/24"), ipaddress.IPv4Network("198.19.254.0/23")]
    assert local_hosts.pick_subnet(pool, used) == ipaddress.IPv4Network("198.19.253.0/24")
    small = ipaddress.IPv4Network("198.18.5.0/24")
    with pytest.raises(ConclaveError) as info:
        local_hosts.pick_subnet(small, [small])
    assert info.value.reason == "underlay_exhausted"


@pytest.mark.parametrize("cidr", ["nonsense", "198.18.0.1/24", "198.18.0.0/30"])
def test_bad_underlay_cidr(cidr):
    with pytest.raises(UsageError) as info:
        local_hosts.parse_underlay(cidr)
    assert info.value.reason == "bad_underlay_cidr"


def test_not_root_is_a_clear_error():
    with pytest.raises(ConclaveError) as info:
        netns.require_root_and_netns(geteuid=lambda: 1000)
    assert info.value.reason == "not_root"


# -- platform plugin ---------------------------------------------------------------------------
def test_choose_platform_truth_table():
    assert cpu_platform.choose_platform(cuda_present=False, vllm_cpu_build=True) == cpu_platform.PLATFORM_CLASS
    assert cpu_platform.choose_platform(cuda_present=True, vllm_cpu_build=True) is None
    assert cpu_platform.choose_platform(cuda_present=False, vllm_cpu_build=False) is None
    assert cpu_platform.choose_platform(cuda_present=True, vllm_cpu_build=False) is None


def test_register_on_this_cpu_only_machine():
    assert not cpu_platform.cuda_present()
    assert cpu_platform.register() == cpu_platform.PLATFORM_CLASS


def test_plugin_is_declared_and_platform_supports_ray():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="vllm.platform_plugins")}
    assert eps.get("conclave_cpu") == "conclave.runtime.serving.cpu_platform:register"
    from vllm.platforms.cpu import CpuPlatform
    cls = cpu_platform.RayCpuPlatform
    assert issubclass(cls, CpuPlatform) and cls.ray_device_key == "GPU"
    assert f"{cls.__module__}.{cls.__qualname__}" == cpu_platform.PLATFORM_CLASS


# -- network seam ------------------------------------------------------------------------------
def test_plain_veth_network_uses_underlay_and_guards_token():
    net = PlainVethNetwork()
    assert isinstance(net, NetworkLayer)
    hosts = [Host("n0", "ns0", "198.18.0.1", "eth0"), Host("n1", "ns1", "198.18.0.2", "eth0")]
    addrs = net.bring_up(hosts)
    assert addrs == {"n0": ClusterAddress("198.18.0.1", "eth0"), "n1": ClusterAddress("198.18.0.2", "eth0")}
    token = net.release_ray_token(hosts[0])
    assert len(token) == 64 and token == net.release_ray_token(hosts[1])
    other = PlainVethNetwork()
    other.bring_up(hosts)
    assert other.release_ray_token(hosts[0]) != token  # generated per cluster
    assert token not in repr(net)
    with pytest.raises(KeyError):
        net.release_ray_token(Host("n9", "ns9", "198.18.0.9", "eth0"))
    assert net.describe()["encrypted"] is False


def test_network_layers_by_name():
    from conclave.runtime.local import network
    from conclave.runtime.local.attested import AttestedOverlayNetwork
    assert isinstance(network.create("plain-veth"), PlainVethNetwork)
    assert isinstance(network.create("plain"), PlainVethNetwork)
    attested = network.create("attested")
    assert isinstance(attested, AttestedOverlayNetwork) and isinstance(attested, NetworkLayer)
    assert network.DEFAULT_NETWORK == "attested"
    with pytest.raises(ValueError):
        network.create("nope")
