"""A local webhook receiver for the tests (the far edge): verifies, records, fails or stalls on demand.

Every request is checked with the `standardwebhooks` library, as a real
receiver would; `verified` says whether its signature matched the secret.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


class Receiver:
    def __init__(self, fail_first: int, stall_s: float, secret: str | Callable[[], str] | None) -> None:
        self.fail_first = fail_first
        self.stall_s = stall_s
        self.secret = secret
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.url = ""

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.calls)

    def verified(self, body: bytes, headers: dict[str, str]) -> bool | None:
        """Whether standardwebhooks accepts the request (None when the receiver was given no secret)."""
        if self.secret is None:
            return None
        secret = self.secret() if callable(self.secret) else self.secret
        try:
            Webhook(secret).verify(body, headers)
            return True
        except WebhookVerificationError:
            return False


@contextmanager
def webhook_receiver(fail_first: int = 0, stall_s: float = 0.0, secret: str | Callable[[], str] | None = None) -> Iterator[Receiver]:
    """fail_first: answer 500 to that many requests first; stall_s: hold every answer that long (until the receiver closes)."""
    receiver = Receiver(fail_first, stall_s, secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with receiver.lock:
                status = 500 if len(receiver.calls) < receiver.fail_first else 200
                receiver.calls.append({"headers": headers, "body": body, "json": json.loads(body), "status": status,
                                       "verified": receiver.verified(body, headers)})
            if receiver.stall_s:
                receiver.closing.wait(receiver.stall_s)
            try:
                self.send_response(status)
                self.end_headers()
            except OSError:
                pass  # the sender gave up waiting

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.closing.set()
        server.shutdown()
        server.server_close()
