"""The daemon's socket, spoken to byte by byte: permissions, malformed frames, bad requests, a
config error reported instead of a crash, and version/status answers."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import pytest

from fimble.models import wire

FIMBLE = [sys.executable, "-m", "fimble"]


def start_daemon(env: dict, runtime_dir: Path, log: Path | None = None) -> subprocess.Popen:
    """`fimble daemon run`. Its log goes to `log` when given: a pipe nobody reads fills up, and a
    daemon that logs much then blocks in its next write."""
    stderr = open(log, "w") if log is not None else subprocess.PIPE
    process = subprocess.Popen([*FIMBLE, "daemon", "run"], env=env, stderr=stderr, text=True)
    deadline = time.monotonic() + 60
    while not (runtime_dir / "daemon.sock").exists():
        assert process.poll() is None, log.read_text() if log is not None else process.stderr.read()
        assert time.monotonic() < deadline, "the daemon did not open its socket"
        time.sleep(0.05)
    return process


@pytest.fixture(scope="module")
def daemon(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("daemon")
    config = root / "config.toml"
    config.write_text(f'[models.single_line]\nsource = "{tiny_checkpoint}"\nquantization = "none"\ndevice = "cpu"\n')
    with tempfile.TemporaryDirectory(prefix="fimble-d-") as runtime:
        env = dict(os.environ, FIMBLE_CONFIG=str(config), FIMBLE_RUNTIME_DIR=runtime, FIMBLE_CACHE_DIR=str(root / "cache"))
        process = start_daemon(env, Path(runtime))
        yield Path(runtime), env, process
        process.terminate()
        process.wait(timeout=30)


class Conversation:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.buffer = b""

    def send_raw(self, body: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def send(self, message) -> None:
        self.send_raw(msgpack.packb(message))

    def receive(self) -> dict:
        while len(self.buffer) < 4 or len(self.buffer) < 4 + struct.unpack(">I", self.buffer[:4])[0]:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        (length,) = struct.unpack(">I", self.buffer[:4])
        body, self.buffer = self.buffer[4 : 4 + length], self.buffer[4 + length :]
        return msgpack.unpackb(body)

    def ask(self, message) -> dict:
        self.send(message)
        return self.receive()


def test_socket_and_runtime_dir_are_private(daemon):
    runtime, _, _ = daemon
    assert stat.S_IMODE(os.stat(runtime / "daemon.sock").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700


def test_hello_carries_the_protocol_version(daemon):
    runtime, _, process = daemon
    reply = Conversation(runtime / "daemon.sock").ask({"id": 1, "op": "hello"})
    assert reply == {"id": 1, "ok": True, "version": wire.PROTOCOL_VERSION, "pid": process.pid}


def generate(request: dict, request_id: int = 5) -> dict:
    return {"id": request_id, "op": "generate", "request": {"role": "single_line", "max_new_tokens": 8, **request}}


@pytest.mark.parametrize(
    "body, error",
    [
        (b"\xc1\xc1 not msgpack", "not valid msgpack"),
        (msgpack.packb([1, 2, 3]), "must hold a map"),
        (msgpack.packb({"op": "hello"}), "'id' must be an integer"),
        (msgpack.packb({"id": 7, "op": "format_disk"}), "unknown op 'format_disk'"),
        (msgpack.packb({"id": 8, "op": "generate", "role": "single_line"}), "unknown key(s) 'role'"),
        (msgpack.packb({"id": 8, "op": "generate"}), "request: required"),
        (msgpack.packb(generate({"role": "poet", "prompt_ids": [1]}, 9)), "request.role: unknown role 'poet'"),
        (msgpack.packb(generate({"prompt_ids": "abc"}, 10)), "request.prompt_ids"),
        (msgpack.packb(generate({"prompt_ids": [1, "two"]}, 10)), "request.prompt_ids[1]: expected int, got str"),
        (msgpack.packb(generate({"prompt_ids": [1], "max_new_tokens": 0}, 10)), "max_new_tokens must be at least 1"),
        (msgpack.packb(generate({"prompt_ids": [1], "stop": {"after_text": "yes"}}, 10)), "request.stop.after_text: expected bool"),
        (msgpack.packb(generate({"prompt_ids": [1] * 5000}, 11)), "exceeds the context length"),
        (msgpack.packb({"id": 12, "op": "cancel", "target": "all"}), "target: expected int"),
    ],
)
def test_a_malformed_frame_gets_an_error_and_the_connection_lives_on(daemon, body, error):
    runtime, _, _ = daemon
    conversation = Conversation(runtime / "daemon.sock")
    conversation.send_raw(body)
    reply = conversation.receive()
    assert reply["done"] is True and error in reply["error"]
    assert conversation.ask({"id": 99, "op": "hello"})["ok"] is True


def test_an_impossible_frame_length_closes_only_that_connection(daemon):
    runtime, _, process = daemon
    conversation = Conversation(runtime / "daemon.sock")
    conversation.sock.sendall(struct.pack(">I", wire.MAX_FRAME_BYTES + 1))
    assert "exceeds" in conversation.receive()["error"]
    with pytest.raises(ConnectionError):
        conversation.receive()
    assert process.poll() is None
    assert Conversation(runtime / "daemon.sock").ask({"id": 1, "op": "hello"})["ok"] is True


def test_generate_streams_text_then_a_result(daemon, tiny_checkpoint):
    from transformers import AutoTokenizer

    runtime, _, _ = daemon
    ids = AutoTokenizer.from_pretrained(tiny_checkpoint).encode("def fibonacci(n):\n")
    conversation = Conversation(runtime / "daemon.sock")
    conversation.send(generate({"prompt_ids": ids}))
    replies = [conversation.receive()]
    while not replies[-1].get("done"):
        replies.append(conversation.receive())
    streamed = "".join(r["chunk"]["text"] for r in replies[:-1])
    result = replies[-1]["result"]
    assert result["text"] == streamed and result["finish_reason"] == "length" and len(result["token_ids"]) == 8
    assert result["stats"]["prompt_tokens"] == len(ids) and result["stats"]["generated_tokens"] == 8


def test_a_second_daemon_refuses_to_start(daemon):
    _, env, _ = daemon
    second = subprocess.run([*FIMBLE, "daemon", "run"], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "another Fimble daemon is running" in second.stderr


def test_a_role_loads_on_its_first_request_and_no_earlier(daemon):
    runtime, _, _ = daemon
    conversation = Conversation(runtime / "daemon.sock")
    assert conversation.ask({"id": 1, "op": "model", "role": "single_line"})["ok"] is True
    roles = conversation.ask({"id": 2, "op": "status"})["status"]["roles"]
    assert roles["single_line"]["state"] == "ready"
    # Nobody asked for them: the embedded model those roles would use is not loaded.
    assert roles["multi_line"]["state"] == roles["chat"]["state"] == "not loaded"
    assert roles["chat"]["spec"]["source"] == "embedded"


def test_status_command_shows_models_cache_and_latency(daemon):
    runtime, env, _ = daemon
    assert Conversation(runtime / "daemon.sock").ask({"id": 1, "op": "model", "role": "single_line"})["ok"] is True
    shown = subprocess.run([*FIMBLE, "daemon", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "single_line  ready" in shown.stdout and "cache: 1024 pages of 16 tokens" in shown.stdout
    assert "requests" in shown.stdout


def test_a_bad_config_is_reported_not_fatal(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[models.single_line]\nquantization = "int3"\n')
    with tempfile.TemporaryDirectory(prefix="fimble-d-") as runtime:
        env = dict(os.environ, FIMBLE_CONFIG=str(config), FIMBLE_RUNTIME_DIR=runtime)
        process = start_daemon(env, Path(runtime))
        try:
            reply = Conversation(Path(runtime) / "daemon.sock").ask({"id": 1, "op": "model", "role": "single_line"})
            assert "quantization: 'int3' is not allowed; must be one of" in reply["error"]
            stopped = subprocess.run([*FIMBLE, "daemon", "stop"], env=env, capture_output=True, text=True, timeout=30)
            assert "daemon stopped" in stopped.stdout
            assert process.wait(timeout=30) == 0
            assert not (Path(runtime) / "daemon.sock").exists()
        finally:
            process.kill()


async def test_concurrent_requests_for_a_model_share_one_query_and_one_tokenizer(daemon, monkeypatch):
    """Every keystroke asks for the role's model before it builds a prompt. They must share one
    `model` query: one each made the daemon serialise, and the editor rebuild, the tokenizer per
    keystroke after every restart, which held both event loops for seconds."""
    from fimble.models.backend import DaemonBackend, served_tokenizer
    from fimble.models.daemon_client import DaemonClient
    from fimble.models.spec import Role

    runtime, _, _ = daemon
    monkeypatch.setenv("FIMBLE_RUNTIME_DIR", str(runtime))
    client = DaemonClient(autostart=False)
    queries: list = []
    real_call = client.call

    async def counted_call(request, reply):
        queries.append(type(request).__name__)
        return await real_call(request, reply)

    client.call = counted_call
    backend = DaemonBackend(client)
    superseded = asyncio.ensure_future(backend.model(Role.SINGLE_LINE))
    await asyncio.sleep(0)
    superseded.cancel()  # a keystroke's request cancelled by the next: the query goes on
    served = await asyncio.gather(*(backend.model(Role.SINGLE_LINE) for _ in range(20)))
    assert queries == ["ModelQuery"]
    assert all(model is served[0] for model in served)

    backend.forget_models()  # as after a daemon restart: asked again, the same tokenizer is reused
    again = await backend.model(Role.SINGLE_LINE)
    assert queries == ["ModelQuery", "ModelQuery"]
    assert again.tokenizer is served[0].tokenizer
    assert served_tokenizer.cache_info().hits >= 1
    await client.close()
