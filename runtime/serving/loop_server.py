"""Run an asyncio server on a private event-loop thread (or block on one): the shared lifecycle of
the head's TLS front and the plain-mode API guard.

Why a base class: both servers live inside processes that are not asyncio programs (the node
agent's threads, the cluster supervisor), so each needs the same three ways to run: its own loop
thread (start_in_thread / stop_thread), the calling thread until a stop event (serve_forever), or
an existing loop (await start() / await stop()). Subclasses implement only start() and _release().
"""
from __future__ import annotations

import asyncio
import threading

from aiohttp import web


class LoopServer:
    """Subclasses implement `async start() -> (host, port)` (using _listen) and `async _release()`."""

    _thread_name = "conclave-loop-server"
    _scheme = "http"
    bound: tuple[str, int] | None = None

    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    async def start(self) -> tuple[str, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    _runner: web.AppRunner | None = None

    async def stop(self) -> None:
        """Stop listening, then release what the subclass opened (_release)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._release()

    async def _release(self) -> None:
        """Subclasses close their own resources here (e.g. the upstream HTTP session)."""

    @property
    def url(self) -> str:
        """scheme://host:port once listening."""
        if self.bound is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        host = self.bound[0]
        host = f"[{host}]" if ":" in host else host
        return f"{self._scheme}://{host}:{self.bound[1]}"

    async def _listen(self, app: web.Application, host: str, port: int, ssl_context=None) -> tuple[str, int]:
        """Serve `app` on host:port (port 0: any free one); sets self._runner and returns the bound
        (host, port). On failure the server is stopped again before the error propagates."""
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self.stop()
            raise
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        return tuple(sock.getsockname()[:2])  # type: ignore[return-value]

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Blocking: run the server on an event loop in the calling thread until `stop` is set."""
        async def main() -> None:
            await self.start()
            try:
                while stop is None or not stop.is_set():
                    await asyncio.sleep(0.2)
            finally:
                await self.stop()
        asyncio.run(main())

    def start_in_thread(self, timeout: float = 60.0) -> tuple[str, int]:
        """Start on a private event loop thread; returns once listening (raises if start fails)."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self._thread_name, daemon=True)
        self._thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(self.start(), self._loop).result(timeout)
        except BaseException:
            self.stop_thread()
            raise

    def stop_thread(self, timeout: float = 30.0) -> None:
        """Stop what start_in_thread started (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None

        async def shutdown() -> None:
            await self.stop()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            if thread.is_alive():
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()
