"""Fuzzing `fimble lsp` over stdio: hypothesis strategies for what an editor (or a broken one) can
write, a raw JSON-RPC pipe to a real server, and the property every case must keep:

- the server is still running;
- every request got a result or an LSP error;
- afterwards, a valid inline completion is still served.

Used by tests/lsp_server/test_fuzzed_messages.py (a seeded few hundred cases) and by
benchmarks/fuzz_campaign.py (the full campaign).
"""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from tests.lsp_server.conftest import FIMBLE, QUIET

ANSWER_TIMEOUT_S = 20.0
# Short answers: the property is that requests are served, and a case's cost is mostly the model's.
FUZZ_OPTIONS = {**QUIET, "maxSingleLineTokens": 4, "maxMultiLineTokens": 8}
HOME_URI = "file:///fuzz/home.py"
HOME_TEXT = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return "
# Methods with handlers, and those an editor sends that we don't serve. initialize, shutdown and
# exit change the server's lifetime, so they have campaigns of their own (before_initialize, after_shutdown).
METHODS = [
    "textDocument/inlineCompletion",
    "textDocument/completion",
    "textDocument/codeAction",
    "textDocument/hover",
    "workspace/executeCommand",
    "fimble/chat",
    "fimble/chatCancel",
    "fimble/chatSessions",
    "fimble/status",
]
LIFETIME_METHODS = ("initialize", "initialized", "shutdown", "exit")
NOTIFICATIONS = ["textDocument/didOpen", "textDocument/didChange", "textDocument/didClose", "workspace/didChangeConfiguration", "$/cancelRequest", "fimble/accepted"]


_MISSING = object()  # a message without "params" (or without "id")


class ServerDied(AssertionError):
    pass


class Unanswered(AssertionError):
    pass


# --- the pipe -----------------------------------------------------------------------------------


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class RawServer:
    """`fimble lsp` on pipes. A reader thread collects answers by id and answers the server's own
    requests (workspace/configuration, progress) with null, as a minimal editor would."""

    def __init__(self, env: dict):
        self.process = subprocess.Popen([*FIMBLE, "lsp"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.answers: dict[Any, dict] = {}
        self._arrived = threading.Condition()
        self._ids = itertools.count(1_000_000)
        self._outgoing: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stdout = self.process.stdout
        while True:
            length = None
            while (line := stdout.readline()) not in (b"", b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if not line or length is None:
                with self._arrived:
                    self._arrived.notify_all()
                return
            message = json.loads(stdout.read(length))
            if "method" in message and "id" in message:  # the server asks the editor something
                self.write(frame(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": None}).encode()))
            elif "method" not in message:
                with self._arrived:
                    self.answers[message.get("id")] = message
                    self._arrived.notify_all()

    def write(self, data: bytes) -> None:
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            raise ServerDied(f"the server closed stdin: {error}") from None

    def next_id(self) -> int:
        return next(self._ids)

    def request(self, method: str, params: Any = _MISSING) -> int:
        request_id = self.next_id()
        self.write(frame(json.dumps(_message(method, params, request_id)).encode()))
        return request_id

    def notify(self, method: str, params: Any = _MISSING) -> None:
        self.write(frame(json.dumps(_message(method, params)).encode()))

    def wait_for(self, request_ids: list, timeout: float = ANSWER_TIMEOUT_S) -> dict[Any, dict]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while missing := [i for i in request_ids if i not in self.answers]:
                if self.process.poll() is not None:
                    raise ServerDied(f"the server exited with {self.process.returncode}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unanswered(f"no answer to requests {missing} within {timeout} s")
                self._arrived.wait(min(left, 0.5))
            return {i: self.answers.pop(i) for i in request_ids}

    def initialize(self, root_uri: str | None = None) -> None:
        params = {"processId": None, "rootUri": root_uri, "capabilities": {}, "initializationOptions": FUZZ_OPTIONS}
        answer = self.wait_for([self.request("initialize", params)], timeout=120)
        assert "result" in next(iter(answer.values())), answer
        self.notify("initialized", {})

    def open_home(self) -> str:
        """Open the home document anew, with a line no earlier check had: its prompt is new, so
        the answer comes from the model, not from the suggestion cache."""
        text = f"# check {self.next_id()}\n{HOME_TEXT}"
        self.notify("textDocument/didOpen", {"textDocument": {"uri": HOME_URI, "languageId": "python", "version": 1, "text": text}})
        return text

    def assert_serves_a_completion(self) -> None:
        """The property's last clause: a valid request still gets a real answer."""
        lines = self.open_home().split("\n")
        position = {"line": len(lines) - 1, "character": len(lines[-1])}
        params = {"textDocument": {"uri": HOME_URI}, "position": position, "context": {"triggerKind": 1}}
        answer = self.wait_for([self.request("textDocument/inlineCompletion", params)])
        reply = next(iter(answer.values()))
        assert "result" in reply and isinstance(reply["result"], (dict, list)), reply

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


# --- what a case sends --------------------------------------------------------------------------


@dataclass
class Case:
    """Bytes to write, in order, and which of them are requests that must be answered."""

    writes: list[tuple[bytes, Any]] = field(default_factory=list)  # (bytes, request id or None)


json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)

# Positions: in range, past the end, negative, huge, and the middle of a surrogate pair (column 1 of
# a line that starts with an emoji).
positions = st.fixed_dictionaries(
    {"line": st.sampled_from([0, 1, 4, 5, 6, 10**6, -1, 2**31]) | st.integers(-3, 50), "character": st.sampled_from([0, 1, 2, 3, 200, -1, 2**31]) | st.integers(-3, 300)}
)
uris = st.sampled_from([HOME_URI, "file:///fuzz/emoji.py", "file:///fuzz/huge.py", "file:///fuzz/binary.py", "file:///nowhere.py", "untitled:Untitled-1", "", "not a uri", "file:///fuzz/%00.py"])

document_texts = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["😀x = 1\n😀😀y = 2\n", "\x00\x01\x02\xff" * 20, "a" * 200_000, "\n" * 50_000, "x = '\ud800'\n"]),
    st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
)


def _text_document_item(uri: str, text: str, version: int) -> dict:
    return {"uri": uri, "languageId": "python", "version": version, "text": text}


def almost_valid_params(method: str) -> st.SearchStrategy:
    """Params of the right shape with values from the edges."""
    where = st.fixed_dictionaries({"textDocument": st.fixed_dictionaries({"uri": uris}), "position": positions})
    if method == "textDocument/inlineCompletion":
        return where.flatmap(lambda base: st.fixed_dictionaries({"context": st.fixed_dictionaries({"triggerKind": st.sampled_from([1, 2, 0, 99])})}).map(lambda extra: {**base, **extra}))
    if method in ("textDocument/completion", "textDocument/hover"):
        return where
    if method == "textDocument/codeAction":
        rng = st.fixed_dictionaries({"start": positions, "end": positions})
        return st.fixed_dictionaries({"textDocument": st.fixed_dictionaries({"uri": uris}), "range": rng, "context": st.just({"diagnostics": []})})
    if method == "workspace/executeCommand":
        return st.fixed_dictionaries({"command": st.sampled_from(["fimble.chatAbout", "fimble.accepted", "no.such.command"]), "arguments": st.lists(json_values, max_size=2)})
    if method == "fimble/chat":
        return st.fixed_dictionaries({"message": st.text(max_size=30), "sessionId": st.none() | st.text(max_size=10), "maxTokens": st.sampled_from([1, 4, 0, -1])})
    if method in ("fimble/chatCancel", "fimble/chatSessions"):
        return st.fixed_dictionaries({"action": st.sampled_from(["list", "get", "delete", "bogus"]), "sessionId": st.none() | st.text(max_size=10)})
    return st.dictionaries(st.text(max_size=10), json_values, max_size=3)


def notification_params(method: str) -> st.SearchStrategy:
    if method == "textDocument/didOpen":
        return st.builds(lambda uri, text: {"textDocument": _text_document_item(uri, text, 1)}, uris, document_texts)
    if method == "textDocument/didChange":
        change = st.fixed_dictionaries({"range": st.fixed_dictionaries({"start": positions, "end": positions}), "text": st.text(max_size=20)}) | st.builds(lambda text: {"text": text}, document_texts)
        return st.builds(lambda uri, version, changes: {"textDocument": {"uri": uri, "version": version}, "contentChanges": changes}, uris, st.integers(-1, 10**9), st.lists(change, max_size=3))
    if method == "textDocument/didClose":
        return st.builds(lambda uri: {"textDocument": {"uri": uri}}, uris)
    return json_values


@st.composite
def requests(draw) -> tuple[str, Any]:
    method = draw(st.sampled_from(METHODS) | st.text(min_size=1, max_size=30).filter(lambda name: name not in LIFETIME_METHODS))
    params = draw(st.one_of(st.just(_MISSING), json_values, almost_valid_params(method)))
    return method, params


@st.composite
def notifications(draw) -> tuple[str, Any]:
    method = draw(st.sampled_from(NOTIFICATIONS) | st.text(min_size=1, max_size=20).filter(lambda name: name not in LIFETIME_METHODS))
    params = draw(st.one_of(st.just(_MISSING), json_values, notification_params(method)))
    return method, params


def _message(method: str, params: Any, request_id: Any = _MISSING) -> dict:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not _MISSING:
        message["id"] = request_id
    if params is not _MISSING:
        message["params"] = params
    return message


# Bodies that are not JSON-RPC: not JSON, not UTF-8, not an object, or an object of the wrong shape.
bad_bodies = st.one_of(
    st.binary(max_size=120),
    st.sampled_from([b"{this is not json", b"\xff\xfe{}", b"[]", b"[1, 2]", b"null", b"42", b'"text"', b"{}", b'{"jsonrpc": "2.0"}', b'{"jsonrpc": "1.0", "method": "x"}']),
    json_values.map(lambda value: json.dumps(value).encode()),
)

# Header blocks that carry no usable Content-Length, then the blank line that ends them.
bad_header_blocks = st.lists(
    st.sampled_from([b"Content-Length: abc", b"Content-Length: -5", b"content-length:", b"Content-Type: application/json", b"X-Junk: \xff\xfe", b"Content-Length 12", b"garbage"]) | st.binary(max_size=40).map(lambda raw: raw.replace(b"\n", b"")),
    min_size=1,
    max_size=3,
).map(lambda lines: b"\r\n".join(lines) + b"\r\n\r\n")


@st.composite
def cases(draw, server: RawServer) -> Case:
    """A few writes: requests (answered, checked), notifications, bad bodies, bad headers, and
    requests without a usable "jsonrpc"."""
    case = Case()
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["request", "request", "notification", "bad_body", "bad_header", "bad_request_shape"]))
        if kind == "request":
            method, params = draw(requests())
            request_id = server.next_id()
            case.writes.append((frame(json.dumps(_message(method, params, request_id)).encode()), request_id))
        elif kind == "notification":
            method, params = draw(notifications())
            case.writes.append((frame(json.dumps(_message(method, params)).encode()), None))
        elif kind == "bad_body":
            case.writes.append((frame(draw(bad_bodies)), None))
        elif kind == "bad_header":
            case.writes.append((draw(bad_header_blocks), None))
        else:  # a request whose "jsonrpc" is wrong or missing
            request_id = server.next_id()
            message = _message("textDocument/hover", {}, request_id)
            version = draw(st.sampled_from(["1.0", 2, None]))
            if version is None:
                del message["jsonrpc"]
            else:
                message["jsonrpc"] = version
            case.writes.append((frame(json.dumps(message).encode()), request_id))
    return case


def run_case(server: RawServer, case: Case) -> int:
    """Send the case and check the property; the number of requests it sent."""
    for data, _ in case.writes:
        server.write(data)
    request_ids = [request_id for _, request_id in case.writes if request_id is not None]
    answers = server.wait_for(request_ids)
    for answer in answers.values():
        assert ("result" in answer) != ("error" in answer), answer
    server.assert_serves_a_completion()
    return len(request_ids)
