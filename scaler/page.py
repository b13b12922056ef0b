"""The farm's status page, served beside the scaler's loop: read-only, loopback by default.

GET (and HEAD) only: `/` the page, `/page.js` and `/page.css` its script and style (files of the
package: the page loads nothing from elsewhere, its plots are SVG drawn by its own script),
`/status.json` the farm as the last cycle saw it (the data of `vfarm scale --status --json`,
503 before the first cycle), `/history.json` the scaler's history (loop.History). Every other
method is refused with 405: nothing here changes the farm. Everything served passed the
redaction already (the loop redacts what it keeps).

When it listens on loopback, a request naming another host (Host header) is refused with 421:
a web page elsewhere cannot read the farm through a DNS name rebound to 127.0.0.1. On port 80 the
bare names count too (a browser leaves the default port out of Host).

Each connection holds a thread: a connection silent for CONNECTION_TIMEOUT is closed, and beyond
MAX_CONNECTIONS open at once a new one is closed unanswered. A client that leaves mid-answer
(reset, broken pipe) costs one debug line of the scaler's log, never a traceback on stderr.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Optional

from .loop import History

# Path -> (file of the package's static folder, content type).
ASSETS = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/index.html": ("page.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
# The page may use only what it was served from here (no CDN, no inline script).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ALLOWED = "GET, HEAD"
# A connection silent this long (no request, or a client that stopped reading) is closed: it
# would otherwise hold its thread for ever.
CONNECTION_TIMEOUT = 10.0
# Connections answered at once (one thread each); the page makes a handful, a browser at most 6
# per host: beyond, a new connection is closed at once instead of starting another thread.
MAX_CONNECTIONS = 32
# The port a browser leaves out of the Host header of an http:// URL.
HTTP_DEFAULT_PORT = 80
# ASCII digits only: str.isdigit() also takes "²" and "٨٠٨٠", which are no port of a URL.
_PORT = re.compile(r"[0-9]{1,5}")


class AddressError(ValueError):
    """An --http value that is not [ADDRESS:]PORT."""


def parse_address(value: str) -> tuple[str, int]:
    """`PORT`, `ADDRESS:PORT` or `[IPV6]:PORT` as (address, port); a bare port binds 127.0.0.1.
    The port is ASCII digits, 1-65535; the address an IP address or localhost (AddressError else)."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise AddressError(f"not [ADDRESS:]PORT with a port number 1-65535: {value!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise AddressError(f"not an IP address (or localhost): {host!r}") from None
    return host, int(port_text)


def read_asset(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


class PageHandler(BaseHTTPRequestHandler):
    """One request to the page. The server carries `history`, `loopback_hosts` (the Host values
    accepted, or None for any) and `connection_timeout` (how long a connection may stay silent)."""

    server: PageServer
    server_version = "vfarm-page"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # A silent client is dropped (http.server logs "Request timed out") instead of holding
        # its thread; the server's value, not the class's `timeout`, so that a test can shorten it.
        self.connection.settimeout(self.server.connection_timeout)

    def __getattr__(self, name: str) -> Any:
        # http.server calls do_<METHOD>: every method but GET and HEAD is refused the same way.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send(405, b'{"error": "read-only: only GET and HEAD"}\n', "application/json", {"Allow": ALLOWED})

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        hosts = self.server.loopback_hosts
        if hosts is not None and (self.headers.get("Host") or "").lower() not in hosts:
            self._send(421, b'{"error": "this page answers only to its loopback address"}\n', "application/json", body=body)
            return
        path = self.path.split("?", 1)[0]
        if path in ASSETS:
            name, kind = ASSETS[path]
            self._send(200, read_asset(name), kind, body=body)
        elif path == "/status.json":
            status = self.server.history.status()
            if status is None:
                self._send(503, b'{"error": "no cycle has run yet"}\n', "application/json", {"Retry-After": "5"}, body=body)
            else:
                self._json(status, body)
        elif path == "/history.json":
            self._json({"farm": self.server.farm, "check_every": self.server.history.check_every, **self.server.history.to_json()}, body)
        else:
            self._send(404, b'{"error": "not found"}\n', "application/json", body=body)

    def _json(self, data: dict[str, Any], body: bool) -> None:
        self._send(200, (json.dumps(data, sort_keys=True) + "\n").encode(), "application/json", body=body)

    def _send(self, code: int, data: bytes, kind: str, extra: Optional[dict[str, str]] = None, body: bool = True) -> None:
        self.send_response(code)
        for key, value in {**SECURITY_HEADERS, "Content-Type": kind, "Content-Length": str(len(data)), **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        self.server.log.debug("page: " + format, *args)


class PageServer(ThreadingHTTPServer):
    """The page's server: one thread per connection, at most MAX_CONNECTIONS (or as given) at once;
    a connection beyond is closed unanswered. Errors answering a client are one line of LOG."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], history: History, farm: str, log: logging.Logger,
                 timeout: float = CONNECTION_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.history = history
        self.farm = farm
        self.log = log
        self.connection_timeout = timeout
        self._open = threading.BoundedSemaphore(max_connections)
        super().__init__(address, PageHandler)
        # The port bound (port 0 picks one): the one a client names in Host.
        self.loopback_hosts = _loopback_hosts(host, self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._open.acquire(blocking=False):
            self.log.debug("page: too many connections open: closing the one from %s", _client(client_address))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts process_request_thread
        except BaseException:
            self._open.release()  # no thread started: nothing else releases its place
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._open.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line in the scaler's log instead of socketserver's traceback on stderr: debug for a
        client gone mid-answer (reset, broken pipe: a tab closed), a warning for anything else."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self.log.debug("page: connection from %s ended early: %s", _client(client_address), error)
        else:
            self.log.warning("page: answering %s failed: %s: %s", _client(client_address), type(error).__name__, error)


def _client(address: Any) -> str:
    """A client's (host, port, ...) as HOST:PORT for the log."""
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)


def _loopback_hosts(host: str, port: int) -> Optional[set[str]]:
    """The Host headers a page on a loopback address answers to; None (any) elsewhere. Each
    loopback name with the port; on port 80 also without it (browsers leave the default out)."""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        return None
    names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
    hosts = {f"{name}:{port}" for name in names}
    if port == HTTP_DEFAULT_PORT:
        hosts |= names
    return hosts


def serve(address: tuple[str, int], history: History, farm: str, log: logging.Logger,
          timeout: float = CONNECTION_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> tuple[PageServer, Callable[[], None]]:
    """Start the page on ADDRESS in a thread; (the server, what stops it). OSError when it cannot listen.
    TIMEOUT and MAX_CONNECTIONS: see PageServer."""
    server = PageServer(address, history, farm, log, timeout, max_connections)
    thread = threading.Thread(target=server.serve_forever, name="vfarm-page", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return server, stop
