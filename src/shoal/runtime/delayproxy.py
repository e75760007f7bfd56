"""A TCP proxy on 127.0.0.1 that holds every chunk for a fixed one-way delay, each direction.

Stands in for `tc netem delay` on kernels without netem. Order is kept; the
delay is added once per direction (arrival time + delay, then forward), so a
request/reply pair sees twice the one-way delay, like a real link. Runs an
asyncio loop in one thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from shoal.errors import RuntimeServiceError


class DelayProxy:
    """Forward 127.0.0.1:<port> to `target`, delaying each direction by `delay_ms`.

    Args:
        target: (host, port) to forward to.
        delay_ms: One-way delay.
    """

    def __init__(self, target: tuple[str, int], delay_ms: float) -> None:
        self.target = target
        self.delay_s = delay_ms / 1e3
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shoal-delay-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> int:
        """Listen on a free loopback port; returns it."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        try:
            self.port = future.result(timeout=5.0)
        except Exception as exc:
            self.stop()
            raise RuntimeServiceError(f"delay proxy cannot listen: {exc}") from None
        return self.port

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def send() -> None:
            while (item := await queue.get()) is not None:
                wait = item[0] - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(item[1])
                await dst.drain()

        sender = asyncio.ensure_future(send())
        try:
            while data := await src.read(1 << 16):
                queue.put_nowait((loop.time() + self.delay_s, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            try:
                await sender
            except (ConnectionError, OSError):
                pass
            dst.close()

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop thread."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)
        self._loop.close()
