"""`conclave rendezvous`: host a standalone rendezvous (the untrusted relay of node announcements).

The rendezvous believes nothing and vouches for nothing (admission checks every key against
evidence), so it runs outside any CVM, e.g. as an ordinary pod behind a Kubernetes Service. It
serves conclave.overlay.rendezvous.RendezvousService on a gRPC server until SIGTERM/SIGINT, then
stops cleanly and exits 0.
"""
from __future__ import annotations

import ipaddress

from conclave.runtime import log as clog
from conclave.runtime.cli.grpc_service import serve_until_signalled
from conclave.runtime.errors import UsageError



def register(subparsers) -> None:
    p = subparsers.add_parser("rendezvous", help="host a standalone rendezvous (untrusted announcement relay)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="bind address (0.0.0.0 in a pod fronted by a Service; default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True, metavar="N", help="TCP port of the rendezvous gRPC service")
    p.add_argument("--ttl", type=float, default=None, metavar="SECONDS",
                   help="how long an announcement is kept without renewal (default: the service's TTL)")
    p.set_defaults(func=run_rendezvous)


def _validate(args) -> None:
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a TCP port (1-65535)", reason="port_invalid")
    try:
        ipaddress.ip_address(args.host)
    except ValueError:
        raise UsageError(f"--host must be an IP address, not {args.host!r}", reason="host_invalid") from None
    if args.ttl is not None and not args.ttl > 0:
        raise UsageError("--ttl must be positive", reason="ttl_invalid")


def run_rendezvous(args) -> int:
    from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
    from conclave.overlay.rendezvous import RendezvousService

    _validate(args)
    clog.setup()
    service = RendezvousService() if args.ttl is None else RendezvousService(ttl=args.ttl)
    serve_until_signalled(lambda server: pb_grpc.add_RendezvousServicer_to_server(service, server),
                          args.host, args.port, what="rendezvous")
    return 0
