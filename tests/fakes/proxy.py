"""A TCP proxy for fault injection, in front of a real service (Redis, PostgreSQL, the fake
providers), on a free port of 127.0.0.1.

``mode`` decides what a connection gets, and may change at any time:

- ``pass``: bytes flow both ways.
- ``blackhole``: the proxy accepts and reads, and never answers (a hung server, a partition).
- ``reset``: new connections are accepted and reset at once (RST, not a clean close).
- ``garbage``: the client gets bytes no protocol speaks, then a close.
- ``delay``: every chunk from the server is held ``delay`` seconds (a slow server).

``cut()`` resets every open connection now, whatever the mode. The proxy runs its own event
loop in a thread, so it keeps working while a test blocks or runs a loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

MODES = ("pass", "blackhole", "reset", "garbage", "delay")
GARBAGE = b"\x00\xff\x13garbage \xde\xad\xbe\xef\r\n\r\n"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER with a zero timeout makes close() abort the connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.delay = 1.0
        self.accepted = 0  # connections accepted, for tests that count them
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def cut(self) -> None:
        """Reset every open connection, both sides."""
        async def reset_all() -> None:
            for writer in list(self._open):
                _reset(writer)
            self._open.clear()
        self._run(reset_all())

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        mode = self.mode
        if mode == "reset":
            _reset(writer)
            return
        if mode == "garbage":
            writer.write(GARBAGE)
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        self._open.add(writer)
        if mode == "blackhole":
            await self._swallow(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        self._open.add(up_writer)
        pipes = {asyncio.ensure_future(self._pipe(reader, up_writer, slow=False)),
                 asyncio.ensure_future(self._pipe(up_reader, writer, slow=True))}
        # Either side closing ends the connection on both sides.
        _, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for side in (writer, up_writer):
            self._open.discard(side)
            side.close()

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass
        self._open.discard(writer)
        writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    slow: bool) -> None:
        """Copy until EOF. A connection switched to ``blackhole`` stops forwarding, as a
        partition would; ``delay`` holds every chunk from the server."""
        try:
            while chunk := await reader.read(65536):
                if self.mode == "blackhole":
                    continue
                if slow and self.mode == "delay":
                    await asyncio.sleep(self.delay)
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass


@contextlib.contextmanager
def proxy(host: str, port: int) -> Iterator[FaultProxy]:
    """A running :class:`FaultProxy` to ``host:port`` for the duration of the block."""
    running = FaultProxy(host, port).start()
    try:
        yield running
    finally:
        running.stop()
