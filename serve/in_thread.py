"""Run an osr-serve app with uvicorn in a thread of this process, and wait for a server to be ready.

For notebooks, tests and benchmarks; `osr-serve` itself runs uvicorn in the foreground.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

# No proxy for our own probes: an HTTP_PROXY in the environment must not capture 127.0.0.1.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until_ready(url: str, timeout_s: float = 60.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``url + "/readyz"`` until it answers 200. RuntimeError as soon as ``alive()`` is false
    (the server's thread or process ended), TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not alive():
            raise RuntimeError(f"the server for {url} stopped before it was ready")
        with contextlib.suppress(urllib.error.URLError, OSError):  # refused, or 503 while loading
            with _DIRECT.open(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} was not ready within {timeout_s:g} s")
        time.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(app: Any, timeout_s: float = 60.0, **uvicorn_options: Any) -> Iterator[tuple[str, Any]]:
    """Run ``app`` (127.0.0.1 and a free port unless ``host``/``port`` are given) until the block
    ends; yields ``(base url, uvicorn.Server)`` once /readyz answers 200."""
    import uvicorn

    options = {"host": "127.0.0.1", "log_level": "warning", **uvicorn_options}
    options.setdefault("port", free_port(options["host"]))
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{options['host']}:{options['port']}"
    try:
        wait_until_ready(url, timeout_s, alive=thread.is_alive)
        yield url, server
    finally:
        server.should_exit = True
        thread.join(30)
