"""A folder served over HTTP on 127.0.0.1 (a free port), in a thread: what a local guest sees as
http://10.0.2.100/, and the locally built packages an image build installs from."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        self.server.requests.append(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}".strip())


class LoopbackServer(http.server.ThreadingHTTPServer):
    """Serves ROOT on 127.0.0.1 (a free port); the guest sees it as http://10.0.2.100/."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(self.root)))
        self.thread = threading.Thread(target=self.serve_forever, name="vfarm-http", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def __exit__(self, *args: object) -> None:
        # The base class only closes the socket: the serving thread must stop first.
        self.close()
