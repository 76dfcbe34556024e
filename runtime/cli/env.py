"""`conclave env [--shell bash|fish|json]`: the environment any OpenAI client needs for the local cluster.

Why: after `eval "$(conclave env)"` the `openai` package, curl, LangChain or vLLM's benchmark reach
the local cluster's endpoint with its API key and trust exactly the head's attested TLS certificate,
without anyone copying values out of `conclave status --json`. Reads only the local status file.

Prints OPENAI_BASE_URL, OPENAI_API_KEY (the cluster's key, or "none" for a cluster without one) and,
for the attested (TLS) endpoint, SSL_CERT_FILE (the head's certificate as the only CA: note that this
shell then trusts nothing else over TLS) plus CURL_CA_BUNDLE/REQUESTS_CA_BUNDLE for the same file.
Exit 3 [no_cluster] when no local cluster is up, [cluster_not_ready] while it is still starting.

local_cluster() is the shared reader for commands that default to the local cluster (--local).
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.node import process
from conclave.runtime.local import state as state_mod

SHELLS = ("bash", "fish", "json")


@dataclass(frozen=True)
class LocalCluster:
    """What a client needs from the local status file (api_key is a secret: not in repr)."""
    endpoint: str                   # OpenAI base URL, ".../v1"
    api_key: str | None
    ca_cert: str | None             # the head's TLS certificate (attested mode)
    manifest: str | None            # signed deployment manifest (attested mode)
    sim_root: str | None            # simulated TEE root certificate (attested mode)
    owner_fingerprint: str | None

    def __repr__(self) -> str:
        return (f"LocalCluster(endpoint={self.endpoint!r}, api_key={'<redacted>' if self.api_key else None}, "
                f"ca_cert={self.ca_cert!r}, manifest={self.manifest!r})")

    @property
    def front_url(self) -> str:
        """The endpoint without /v1 (what `conclave verify` takes)."""
        return self.endpoint[:-3] if self.endpoint.endswith("/v1") else self.endpoint.rstrip("/")


def local_cluster(path: Path | None = None, *, require_running: bool = True) -> LocalCluster:
    st = state_mod.read(path)
    if st is None:
        raise ConclaveError("no_cluster", "no local cluster is up; start one with `conclave up --local`",
                            exit_code=ExitCode.RUNTIME)
    if st.get("phase") != "ready" or not st.get("endpoint"):
        raise ConclaveError("cluster_not_ready", f"the local cluster is {st.get('phase') or 'not ready'}; "
                            "wait for `conclave status` to say ready", exit_code=ExitCode.RUNTIME)
    pid = st.get("supervisor_pid")
    if require_running and not (pid and process.alive(int(pid))):
        raise ConclaveError("no_cluster", "the local cluster's supervisor is not running; run `conclave down`",
                            exit_code=ExitCode.RUNTIME)
    net = st.get("network") if isinstance(st.get("network"), dict) else {}
    return LocalCluster(endpoint=st["endpoint"], api_key=st.get("api_key"), ca_cert=st.get("ca_cert"),
                        manifest=st.get("manifest") or net.get("manifest"), sim_root=net.get("sim_root"),
                        owner_fingerprint=net.get("owner_fingerprint"))


def client_env(cluster: LocalCluster) -> dict[str, str]:
    env = {"OPENAI_BASE_URL": cluster.endpoint, "OPENAI_API_KEY": cluster.api_key or "none"}
    if cluster.ca_cert:
        env.update({"SSL_CERT_FILE": cluster.ca_cert, "REQUESTS_CA_BUNDLE": cluster.ca_cert,
                    "CURL_CA_BUNDLE": cluster.ca_cert})
    return env


def render(env: dict[str, str], shell: str) -> str:
    if shell == "json":
        return json.dumps(env, sort_keys=True)
    if shell == "fish":
        return "\n".join(f"set -gx {k} {shlex.quote(v)};" for k, v in env.items())
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


def _cmd_env(args) -> int:
    args.json = args.shell == "json"          # errors in JSON too, for scripts
    print(render(client_env(local_cluster()), args.shell))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("env", help="print OPENAI_BASE_URL, OPENAI_API_KEY, SSL_CERT_FILE for the "
                                          "local cluster (eval \"$(conclave env)\")")
    p.add_argument("--shell", choices=SHELLS, default="bash", help="output syntax (default bash)")
    p.set_defaults(func=_cmd_env, json=False)
