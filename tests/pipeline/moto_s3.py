"""A real S3 API on 127.0.0.1 for the remote-storage tests: moto's server app behind werkzeug, as moto's own
`ThreadedMotoServer` runs it, with three additions the tests need.

- `stop()` is an outage: it closes the listening socket and cuts every open connection (moto's
  `ThreadedMotoServer.stop()` leaves both open, so a client keeps talking over its pooled keep-alive
  connections, or waits in the backlog). The buckets stay: moto keeps them in this process's memory, so
  `start()` on the same port serves them again, as a real S3 endpoint that came back would.
- `hold_puts_after(n)` lets `n` object uploads through, then holds the next one (unanswered, not stored)
  and sets an event: a test stops the server at an exact point of a transfer, with no timing guesswork.
- Requests are counted by method, and the access key ids they were signed with are kept, so a test sees
  that a download really went through S3 with the credentials it gave.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

REGION = "us-east-1"
_CREDENTIAL = re.compile(r"Credential=([^/]+)/")  # SigV4: the access key id, then the scope

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _TrackingHandler(MotoRequestHandler):
    """Registers its connection with the server while open, so that `S3Server.stop()` can cut it."""

    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()


class _Server(BaseWSGIServer):
    lock: threading.Lock
    connections: set[socket.socket]


class S3Server:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: Counter[str] = Counter()
        self.access_keys: set[str] = set()
        self._lock = threading.Lock()
        self._app = DomainDispatcherApplication(create_backend_app)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._puts_allowed: int | None = None
        self.held = threading.Event()  # set once an upload is being held (hold_puts_after)
        self._release = threading.Event()

    def start(self) -> None:
        assert self._server is None, "already running"
        server = make_server(
            "127.0.0.1", self.port, self._counting, threaded=True, request_handler=_TrackingHandler
        )
        assert isinstance(server, BaseWSGIServer)
        server.lock = threading.Lock()  # type: ignore[attr-defined]
        server.connections = set()  # type: ignore[attr-defined]
        self._server = server  # type: ignore[assignment]
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """An outage: nothing is accepted or answered any more; every client connection is cut."""
        server, self._server = self._server, None
        assert server is not None and self._thread is not None
        server.shutdown()
        server.server_close()
        with server.lock:
            open_connections = list(server.connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):  # closed by its handler in the meantime
                conn.shutdown(socket.SHUT_RDWR)
        self.release()
        self._thread.join(timeout=30)

    def hold_puts_after(self, n: int) -> None:
        """Store `n` more object uploads, then hold the next one, setting `held`, until `stop()` or
        `release()`."""
        with self._lock:
            self._puts_allowed = n
        self.held.clear()
        self._release.clear()

    def release(self) -> None:
        """Stop holding: a held upload is answered 503 (not stored), later ones go through."""
        with self._lock:
            self._puts_allowed = None
        self._release.set()

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def _counting(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        # An object upload is a PUT of /bucket/key (a bucket's creation is a PUT of /bucket).
        is_upload = method == "PUT" and environ.get("PATH_INFO", "").strip("/").count("/") >= 1
        signed_by = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        with self._lock:
            self.requests[method] += 1
            if signed_by:
                self.access_keys.add(signed_by.group(1))
            hold = is_upload and self._puts_allowed is not None and self._puts_allowed <= 0
            if is_upload and self._puts_allowed is not None:
                self._puts_allowed -= 1
        if hold:
            self.held.set()
            self._release.wait(timeout=120)
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return [b""]
        app: WSGIApp = self._app
        return app(environ, start_response)
