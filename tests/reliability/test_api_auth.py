"""API key enforcement on every route the running vLLM server exposes (from its own /openapi.json).

Finding (see README.md): vLLM's AuthenticationMiddleware guards only paths starting with /v1,
/v2, /inference or /cohere; every other route (POST /invocations: full completions, /tokenize,
/scale_elastic_ep, /metrics, ...) answers without a key. The route list comes from the engine
itself; every route is then probed through the public endpoint, where the API guard
(runtime/serving/plain_front.py, api_guard.py) requires the key on everything but /health.
"""
from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import httpx
import pytest

from conclave.runtime.node.engine import ENGINE_PORT

from .api_support import HELLO, MODEL, headers, server_root

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(600)]

PUBLIC_HEALTH = {("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")}
# never sent with a body that could act: a keyless request that reaches the handler gets a 4xx
# from validation, which still shows the route is unguarded (401/403 is the only "guarded")
SAFE_BODY = {}


def engine_root(cluster) -> str:
    """The vLLM server itself (the head's cluster address, reachable from the root namespace in the
    plain modes): the route list comes from there, since the public endpoint guards /openapi.json."""
    return f"http://{cluster.status['nodes'][0]['cluster_ip']}:{ENGINE_PORT}"


def routes(cluster) -> list[tuple[str, str]]:
    spec = httpx.get(engine_root(cluster) + "/openapi.json", timeout=30).json()
    out = []
    for path, ops in spec["paths"].items():
        for method in ops:
            if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                out.append((method.upper(), path.replace("{", "").replace("}", "")))
    return sorted(out)


def keyless_status(cluster, method: str, path: str, key: str | None = None) -> int:
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    resp = httpx.request(method, server_root(cluster) + path, headers=hdrs, timeout=60,
                         json=SAFE_BODY if method in ("POST", "PUT", "PATCH") else None)
    return resp.status_code


@pytest.fixture(scope="module")
def route_table(rcluster) -> dict[tuple[str, str], int]:
    table = {(m, p): keyless_status(rcluster, m, p) for m, p in routes(rcluster)}
    for extra in ("/openapi.json", "/docs", "/redoc"):   # FastAPI's own, not listed in the spec
        table[("GET", extra)] = keyless_status(rcluster, "GET", extra)
    return table


def test_openapi_lists_the_openai_routes(route_table):
    paths = {p for _, p in route_table}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= paths
    assert len(route_table) >= 10


def test_every_v1_route_refuses_a_missing_or_wrong_key(rcluster, route_table):
    v1 = [(m, p) for m, p in route_table if p.startswith("/v1")]
    assert v1
    assert {f"{m} {p}": route_table[(m, p)] for m, p in v1 if route_table[(m, p)] != 401} == {}
    wrong = {f"{m} {p}": keyless_status(rcluster, m, p, key="wrong-key") for m, p in v1}
    assert {r: c for r, c in wrong.items() if c != 401} == {}


def test_path_and_method_tricks_do_not_bypass_the_key(rcluster):
    url = urlsplit(rcluster.base_url)
    got = {}
    for method, path in [("GET", "//v1/models"), ("GET", "/v1//models"), ("GET", "/V1/models"),
                         ("GET", "/v1%2Fmodels"), ("GET", "/./v1/models"), ("GET", "/v1/models/"),
                         ("GET", "/%761/models"), ("HEAD", "/v1/models"), ("OPTIONS", "/v1/models"),
                         ("OPTIONS", "/v1/chat/completions")]:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            conn.request(method, path)
            got[f"{method} {path}"] = conn.getresponse().status
        finally:
            conn.close()
    assert {k: v for k, v in got.items() if 200 <= v < 300} == {}, got


def test_the_key_opens_the_v1_routes(rcluster):
    resp = httpx.get(rcluster.base_url + "/models", headers=headers(rcluster), timeout=30)
    assert resp.status_code == 200 and resp.json()["data"][0]["id"] == MODEL


def test_health_routes_answer_without_a_key(rcluster, route_table):
    assert route_table[("GET", "/health")] == 200


def test_no_route_but_health_answers_without_a_key(route_table):
    unguarded = {f"{m} {p}": c for (m, p), c in route_table.items()
                 if (m, p) not in PUBLIC_HEALTH and c not in (401, 403)}
    assert unguarded == {}


def test_invocations_is_not_unauthenticated_inference(rcluster):
    resp = httpx.post(server_root(rcluster) + "/invocations", timeout=120,
                      json={"model": MODEL, "messages": HELLO, "max_tokens": 4, "temperature": 0})
    assert resp.status_code in (401, 403), f"{resp.status_code}: {resp.text[:200]}"
