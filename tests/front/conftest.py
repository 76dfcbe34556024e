"""Fixtures for the head front tests (helpers in front_support.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from conclave.runtime.endpoint.bundle import BundleBuilder
from conclave.runtime.endpoint.tls import generate_head_identity
from conclave.runtime.serving.front import HeadFront
from conclave.runtime.serving.front_report import RunReportState

from front_support import Deployment, FakeVllm, new_report_signer


@pytest.fixture(scope="session")
def deployment() -> Deployment:
    return Deployment.create()


@pytest.fixture
def vllm():
    with FakeVllm() as server:
        yield server


@pytest.fixture
def files(tmp_path, deployment) -> tuple[Path, Path]:
    man, root = tmp_path / "manifest.json", tmp_path / "sim-root.pem"
    man.write_bytes(deployment.manifest_bytes)
    root.write_bytes(deployment.root.cert_pem)
    return man, root


@pytest.fixture
def make_front(tmp_path, deployment, vllm) -> Callable[..., HeadFront]:
    """Factory for started HeadFronts on 127.0.0.1 (stopped after the test).

    make_front(identity=None, bind_spki=None, builder_cls=BundleBuilder, admit_worker=True,
               shards=True, upstream=None, signer=None, **front_kw)
    bind_spki: the TLS key hash the evidence binds (default: the identity's own).
    The front's certificate is written to front.cert_path.
    """
    started: list[HeadFront] = []

    def make(*, identity=None, bind_spki: bytes | None = None, builder_cls=BundleBuilder,
             admit_worker: bool = True, shards: bool = True, upstream: str | None = None,
             signer=None, **front_kw) -> HeadFront:
        identity = identity or generate_head_identity(["127.0.0.1", "localhost"])
        signer = signer or new_report_signer()
        builder = deployment.builder(bind_spki or identity.spki_sha256, signer.public_key, cls=builder_cls)
        report = RunReportState(manifest=deployment.manifest, signer=signer)
        if shards:
            report.set_shards_from_model_manifest(deployment.model_manifest)
        front = HeadFront(builder=builder, report=report, upstream=upstream or vllm.address,
                          identity=identity, listen_host="127.0.0.1", listen_port=0, **front_kw)
        if admit_worker:
            front.on_peer_admitted(**deployment.worker_admission())
        front.start_in_thread()
        started.append(front)
        front.cert_path = front.write_public_cert(tmp_path / f"front-{len(started)}.crt")
        return front

    yield make
    for f in started:
        f.stop_thread()


@pytest.fixture
def make_plain(vllm) -> Callable[..., "PlainFront"]:
    """Factory for started PlainFronts on 127.0.0.1 in front of the fake vLLM (stopped after the test).

    make_plain(api_key=API_KEY, upstream=None, **kw)."""
    from conclave.runtime.serving.plain_front import PlainFront
    from front_support import API_KEY

    started: list[PlainFront] = []

    def make(*, api_key: str | None = API_KEY, upstream: str | None = None, **kw) -> PlainFront:
        front = PlainFront(upstream=upstream or vllm.address, listen_host="127.0.0.1", listen_port=0,
                           api_key=api_key, **kw)
        front.start_in_thread()
        started.append(front)
        return front

    yield make
    for f in started:
        f.stop_thread()
