"""A file server in a thread that answers as the Hugging Face hub does, for download tests that never touch the
network: a `/resolve/` URL redirects (302) to a CDN path, which answers Range requests with 206 and Content-Range
(416 past the end) and every response with Content-Length. It can cut a response short once, ignore ranges, or
offer a file that is not the one asked for."""

from __future__ import annotations

import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

CDN = "/cdn"


def saved(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as the bytes of a `.pth` file (what a hub serves)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class LocalHub:
    def __init__(self):
        self.files: dict[str, bytes] = {}  # URL path (as published) -> content
        self.cut_after: int | None = None  # the next response sends this many body bytes, then hangs up
        self.ignore_range = False
        self.ranges: list[str | None] = []  # the Range header of each CDN request, in order
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                """Quiet: the tests read `ranges`, not the log."""

            def do_GET(self) -> None:
                if "/resolve/" in self.path and not self.path.startswith(CDN):
                    self.send_response(302)
                    self.send_header("Location", CDN + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                hub.ranges.append(self.headers.get("Range"))
                content = hub.files.get(self.path.removeprefix(CDN))
                if content is None:
                    self.send_error(404)
                    return
                start = 0
                asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if asked and not hub.ignore_range:
                    start = int(asked[1])
                    if start >= len(content):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(content)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(content) - start))
                self.end_headers()
                body = content[start:]
                if hub.cut_after is not None:
                    body, hub.cut_after = body[:hub.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
