"""Malformed LSP input on stdin: the server answers what it can and keeps serving."""

from __future__ import annotations

import json
import subprocess

from tests.lsp_server.conftest import FIMBLE


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
        server.stdin.write(frame(b"{this is not json"))
        server.stdin.write(frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "no/such/method", "params": {}}).encode()))
        initialize = {"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {"processId": None, "rootUri": None, "capabilities": {}}}
        server.stdin.write(frame(json.dumps(initialize).encode()))
        server.stdin.flush()
        replies, shown = {}, []
        while 2 not in replies:
            message = read_message(server.stdout)
            if "id" in message and "method" not in message:
                replies[message["id"]] = message
            elif message.get("method") == "window/showMessage":
                shown.append(message["params"]["message"])
        assert any("Expecting property name" in text for text in shown), shown  # the bad JSON is reported
        assert replies[1]["error"]["code"] == -32601  # method not found
        assert replies[2]["result"]["serverInfo"]["name"] == "fimble"
        assert server.poll() is None
    finally:
        server.kill()
        server.wait(timeout=10)
