"""The head's live status page: static files shipped in the package, served without an API key.

Why from the package: nodes may have no internet, so the page (HTML, one script, one stylesheet)
uses no CDN, font or remote asset; the script polls the same origin's /v1/status.json
(serving/status_view.py) and draws the pipeline as inline SVG. A strict Content-Security-Policy
keeps it to those files: no inline script, no other origin, no framing.
"""
from __future__ import annotations

from importlib import resources

from aiohttp import web

from conclave.runtime.serving.api_guard import openai_error

STATUS_PATH = "/status"
ASSETS = {
    STATUS_PATH: ("index.html", "text/html"),
    "/status/app.js": ("app.js", "application/javascript"),
    "/status/style.css": ("style.css", "text/css"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def asset_bytes(name: str) -> bytes:
    """One of the page's files, read from the installed package."""
    return resources.files(__name__).joinpath(name).read_bytes()


class StatusAssets:
    """The page's files, read once, and the handler that serves them (GET / HEAD only)."""

    def __init__(self):
        self._files = {path: (asset_bytes(name), ctype) for path, (name, ctype) in ASSETS.items()}

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._files)

    async def handle(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return openai_error(405, "method_not_allowed", f"{request.path} answers GET only",
                                type_="invalid_request_error", headers={"Allow": "GET"})
        body, ctype = self._files[request.path]
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=SECURITY_HEADERS)
