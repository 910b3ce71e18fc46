"""Run an ASGI app with uvicorn on 127.0.0.1 in a background thread.

The server has its own event loop in its own thread, so it keeps answering while a test blocks
the main thread or runs its own asyncio loop there (the broker's async client, a browser driver).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


class RunningServer:
    """One uvicorn server on a free port of 127.0.0.1; ``start()`` returns its base URL."""

    def __init__(self, app: Any, *, startup_timeout: float = 10.0, lifespan: str = "off",
                 port: int = 0) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,  # 0: the OS picks a free port; read back once the socket is bound
            log_level="warning",
            lifespan=lifespan,  # "on" for the broker itself, which opens its pools there
            ws="none",
            # A handler parked by a "hang" knob must not hold shutdown for long.
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.startup_timeout = startup_timeout
        self.url = ""
        # uvicorn only installs signal handlers from the main thread, so this is safe.
        self._thread = threading.Thread(target=self.server.run, name="fake-providers", daemon=True)

    def start(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn stopped during startup (see its log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("uvicorn did not start in time")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():  # graceful shutdown stuck: make uvicorn give up
            self.server.force_exit = True
            self._thread.join(timeout=5)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` for the duration of the block; yields ``"http://127.0.0.1:PORT"``."""
    with RunningServer(app) as url:
        yield url


@contextlib.contextmanager
def running(app: Any, options: dict[str, Any]) -> Iterator[str]:
    """``app`` under a real uvicorn in a thread, with ``options`` as ``broker serve`` passes
    them to ``uvicorn.run`` (on a free port); yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, **{**options, "port": 0}))
    thread = threading.Thread(target=server.run, name="broker-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
