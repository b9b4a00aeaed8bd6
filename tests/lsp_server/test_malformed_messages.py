"""Malformed LSP input on stdin: the server answers what it can and keeps serving."""

from __future__ import annotations

import json
import subprocess

from tests.lsp_server.conftest import FIMBLE
from tests.lsp_server.stdio_fuzz import RawServer


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def read_message(stdout) -> dict:
    length = None
    while (line := stdout.readline().strip()) != b"":
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return json.loads(stdout.read(length))


def test_garbage_json_does_not_kill_the_server(fimble_env):
    server = subprocess.Popen([*FIMBLE, "lsp"], env=fimble_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"processId": None, "rootUri": None, "capabilities": {}}}
        server.stdin.write(frame(json.dumps(initialize).encode()))
        server.stdin.write(frame(b"{this is not json"))
        server.stdin.write(frame(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "no/such/method", "params": {}}).encode()))
        server.stdin.flush()
        replies, parse_errors, shown = {}, [], []
        while 2 not in replies:
            message = read_message(server.stdout)
            if message.get("id") is not None and "method" not in message:
                replies[message["id"]] = message
            elif "error" in message:
                parse_errors.append(message["error"])
            elif message.get("method") == "window/showMessage":
                shown.append(message["params"]["message"])
        assert replies[1]["result"]["serverInfo"]["name"] == "fimble"
        assert [error["code"] for error in parse_errors] == [-32700]  # answered, under id null
        assert any("Expecting property name" in text for text in shown), shown  # and shown to the user
        assert replies[2]["error"]["code"] == -32601  # method not found
        assert server.poll() is None
    finally:
        server.kill()
        server.wait(timeout=10)


def test_requests_pygls_would_leave_unanswered_get_the_errors_the_specs_name(fimble_env):
    server = RawServer(fimble_env)
    try:
        hover = {"textDocument": {"uri": "file:///a.py"}, "position": {"line": 0, "character": 0}}
        before = server.request("textDocument/hover", hover)
        server.initialize()
        no_params = server.request("textDocument/inlineCompletion")
        wrong_types = server.request("textDocument/inlineCompletion", {"textDocument": 5, "position": "x", "context": {"triggerKind": 1}})
        old_version = server.next_id()
        server.write(frame(json.dumps({"jsonrpc": "1.0", "id": old_version, "method": "textDocument/hover", "params": hover}).encode()))
        answers = server.wait_for([before, no_params, wrong_types, old_version])
        assert answers[before]["error"]["code"] == -32002  # server not initialized
        assert answers[no_params]["error"] == {"code": -32602, "message": "invalid params for 'textDocument/inlineCompletion': the request has no 'params'"}
        assert "expected int @ $.params.position.line" in answers[wrong_types]["error"]["message"]
        assert answers[old_version]["error"]["code"] == -32600
        assert server.wait_for([server.request("shutdown")])
        after = server.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///a.py"}, "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}})
        assert "after 'shutdown'" in server.wait_for([after])[after]["error"]["message"]
    finally:
        server.close()
