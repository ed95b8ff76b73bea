"""A local HTTP server that serves input files for the URL-input tests: files, redirects, stalls and bodies of any size.

Routes are set per test: `server.add("/x.png", body, "image/png")`,
`server.redirect("/r", "http://...")`, `server.add("/slow", body, stall_s=5)`,
`server.add("/drip", body, drip_s=1)` (the headers, then one byte a second;
`drip_headers=True`: the headers too). A body sent `chunked` has no
Content-Length (its size is only known by reading it). POST is answered like
GET (the request body read first): a webhook receiver that drips its answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    location: str = ""
    stall_s: float = 0.0
    chunked: bool = False
    drip_s: float = 0.0
    drip_headers: bool = False


class FileServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[str] = []
        self.port = 0
        self.closing = threading.Event()

    def url(self, path: str, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{path}"

    def add(self, path: str, body: bytes, content_type: str = "application/octet-stream", stall_s: float = 0.0,
            chunked: bool = False, drip_s: float = 0.0, drip_headers: bool = False) -> str:
        self.routes[path] = Route(body=body, content_type=content_type, stall_s=stall_s, chunked=chunked, drip_s=drip_s,
                                  drip_headers=drip_headers)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.routes[path] = Route(status=status, location=location)
        return self.url(path)


@contextmanager
def file_server() -> Iterator[FileServer]:
    files = FileServer()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.do_GET()

        def do_GET(self) -> None:
            files.hits.append(self.path)
            route = files.routes.get(self.path, Route(status=404))
            if route.drip_s:
                self._drip(route)
                return
            try:
                self.send_response(route.status)
                if route.location:
                    self.send_header("location", route.location)
                self.send_header("content-type", route.content_type)
                if route.chunked:
                    self.send_header("transfer-encoding", "chunked")
                else:
                    self.send_header("content-length", str(len(route.body)))
                self.end_headers()
                self._body(route)
            except OSError:
                pass  # the client gave up

        def _drip(self, route: Route) -> None:
            head = (f"HTTP/1.1 {route.status} OK\r\ncontent-type: {route.content_type}\r\n"
                    f"content-length: {len(route.body)}\r\n\r\n").encode()
            try:
                if not route.drip_headers:
                    self.wfile.write(head)
                    self.wfile.flush()
                for byte in (head if route.drip_headers else b"") + route.body:
                    if files.closing.wait(route.drip_s):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            except OSError:
                pass  # the client gave up
            self.close_connection = True

        def _body(self, route: Route) -> None:
            step = max(1, len(route.body) // 20) if route.stall_s else 64 * 1024
            for start in range(0, len(route.body), step):
                chunk = route.body[start:start + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if route.chunked else chunk)
                self.wfile.flush()
                if route.stall_s and files.closing.wait(route.stall_s / 20):
                    return
            if route.chunked:
                self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    files.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield files
    finally:
        files.closing.set()
        server.shutdown()
        server.server_close()
