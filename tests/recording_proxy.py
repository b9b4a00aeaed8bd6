"""An HTTP proxy on 127.0.0.1 that keeps every request it forwards: put in front of a real
OpenAI-compatible server (tests/llama_server.py), it shows exactly what Fimble sent a model.

    proxy = RecordingProxy("http://127.0.0.1:8080").start()   # roles' source = proxy.base_url
    ... drive `fimble lsp` ...
    proxy.sent_text()                                          # every request, as searchable text

Answers stream through unchanged (SSE included): each response is closed after its body, so a
response needs no length and a streamed one is passed on as it comes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

# Hop-by-hop headers, and those that describe a body this proxy re-frames (asked uncompressed, so
# the raw bytes passed on are the body itself).
_NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "accept-encoding", "content-encoding"}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    body: bytes

    def text(self) -> str:
        """The body as text, and when it is JSON, every string in it unescaped too (a PEM key's
        line breaks are "\\n" on the wire)."""
        raw = self.body.decode("utf-8", errors="replace")
        try:
            strings = list(_strings_of(json.loads(raw)))
        except ValueError:
            return raw
        return "\n".join([raw, *strings])


def _strings_of(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_of(item)


class RecordingProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")  # scheme://host:port, no path
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> RecordingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args) -> None:  # quiet: the test reads the records
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="recording-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def model_requests(self) -> list[RecordedRequest]:
        """The requests that carry a prompt (completions and chat), not GET /models."""
        with self._lock:
            return [request for request in self.requests if request.method == "POST"]

    def sent_text(self) -> str:
        with self._lock:
            return "\n".join(request.text() for request in self.requests)

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append(RecordedRequest(handler.command, handler.path, body))
        headers = {key: value for key, value in handler.headers.items() if key.lower() not in _NOT_FORWARDED}
        handler.close_connection = True
        try:
            with httpx.stream(handler.command, self.upstream + handler.path, headers=headers, content=body, timeout=300) as answer:
                handler.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in _NOT_FORWARDED:
                        handler.send_header(key, value)
                handler.send_header("Connection", "close")
                handler.end_headers()
                for chunk in answer.iter_raw():
                    handler.wfile.write(chunk)
                    handler.wfile.flush()
        except (httpx.HTTPError, OSError):  # the client went away, or the server did: nothing to pass on
            pass
