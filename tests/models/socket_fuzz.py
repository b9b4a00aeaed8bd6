"""Fuzzing the daemon's socket: hypothesis strategies for frames a client (or a broken one) can send
over one or several connections, and the property every case must keep:

- the daemon is still running;
- every complete frame got its final reply: `ok` or `done` under the frame's id, or, for a frame
  without a usable id, an error with id null;
- afterwards, a new connection is served a generation;
- the daemon logged no traceback (bad input is refused with a message, not met by a crash inside).

Used by tests/models/test_daemon_fuzz.py (a seeded subset) and benchmarks/fuzz_campaign.py.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import strategies as st

from fimble.models import wire
from tests.conftest import write_tiny_config
from tests.models.test_daemon import Conversation, start_daemon

REPLY_TIMEOUT_S = 30.0
CONNECTIONS = 3
ROLES = ("single_line", "multi_line", "chat")


class DaemonDied(AssertionError):
    pass


class NotAnswered(AssertionError):
    pass


class InternalError(AssertionError):
    """The daemon answered, but logged a traceback: a request it did not expect reached code that
    failed, instead of being refused with a message."""


# --- a daemon on the tiny model -------------------------------------------------------------------


class FuzzedDaemon:
    """`fimble daemon run` with every role on the tiny checkpoint, in a runtime dir of its own."""

    def __init__(self, tiny_checkpoint: Path, root: Path):
        config = write_tiny_config(root / "config.toml", tiny_checkpoint)
        self._runtime = tempfile.TemporaryDirectory(prefix="fimble-fz-")  # AF_UNIX paths are short
        self.runtime = Path(self._runtime.name)
        env = dict(os.environ, FIMBLE_CONFIG=str(config), FIMBLE_RUNTIME_DIR=str(self.runtime), FIMBLE_CACHE_DIR=str(root / "cache"), FIMBLE_DAEMON_IDLE_S="600")
        self.log = root / "daemon.log"
        self._log_read = 0
        self.process: subprocess.Popen = start_daemon(env, self.runtime, self.log)
        self.vocab_size = _vocab_size(tiny_checkpoint)

    @property
    def socket(self) -> Path:
        return self.runtime / "daemon.sock"

    def assert_logged_no_traceback(self) -> None:
        with open(self.log, errors="replace") as log:
            log.seek(self._log_read)
            new = log.read()
            self._log_read = log.tell()
        if "Traceback" in new:
            raise InternalError(new[new.index("Traceback") :][:3000])

    def assert_serves_a_generation(self) -> None:
        if self.process.poll() is not None:
            raise DaemonDied(f"the daemon exited with {self.process.returncode}")
        conversation = Conversation(self.socket)
        conversation.send({"id": 1, "op": "generate", "request": {"role": "single_line", "max_new_tokens": 1, "prompt_ids": [1, 2, 3]}})
        reply = conversation.receive()
        while not reply.get("done"):
            reply = conversation.receive()
        conversation.sock.close()
        assert reply.get("result", {}).get("finish_reason") in ("length", "stop_token", "stop_string"), reply

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._runtime.cleanup()


def _vocab_size(checkpoint: Path) -> int:
    return json.loads((checkpoint / "config.json").read_text())["vocab_size"]


# --- what a case sends ----------------------------------------------------------------------------


@dataclass
class Send:
    connection: int
    data: bytes
    answered_as: Any  # the id the final reply carries (None: an error with id null); _NO_REPLY
    ends_connection: bool = False


_NO_REPLY = object()  # a truncated frame: the connection is closed before it is whole


@dataclass
class SocketCase:
    sends: list[Send] = field(default_factory=list)


msgpack_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
msgpack_values = st.recursive(
    msgpack_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10) | st.integers(-5, 5), inner, max_size=4), max_leaves=10
)


def _token_ids(vocab_size: int) -> st.SearchStrategy:
    in_vocabulary = st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=40)
    return in_vocabulary | st.lists(st.integers(-(2**31), 2**40), max_size=5) | st.just([]) | st.just([1] * 3000)


def generation_requests(vocab_size: int) -> st.SearchStrategy:
    stop = st.fixed_dictionaries(
        {},
        optional={
            "token_ids": st.lists(st.integers(-5, vocab_size + 5), max_size=3),
            "strings": st.lists(st.text(max_size=4), max_size=3),
            "after_text": st.booleans() | msgpack_scalars,
            "block_end": st.none() | st.fixed_dictionaries({"healed": st.text(max_size=3), "typed_indent": st.integers(-2, 8), "next_code_line": st.text(max_size=10)}),
        },
    )
    return st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES) | msgpack_scalars, "max_new_tokens": st.integers(-1, 6) | msgpack_scalars},
        optional={
            "prompt_ids": _token_ids(vocab_size) | msgpack_values,
            "prompt_text": st.text(max_size=20),
            "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "robot"]), "content": st.text(max_size=10)}), max_size=2),
            "stop": stop | msgpack_values,
            "background": st.booleans(),
            "surprise": msgpack_values,
        },
    )


def request_bodies(request_id: int, vocab_size: int, earlier_ids: list[int]) -> st.SearchStrategy:
    """Request maps: each op with fields right, wrong and missing, and ops that don't exist."""
    targets = st.sampled_from(earlier_ids) if earlier_ids else st.integers(0, 5)
    fields = {
        "hello": st.fixed_dictionaries({}, optional={"client": st.text(max_size=10) | msgpack_scalars, "client_pid": st.integers(-1, 2**31) | msgpack_scalars}),
        "model": st.fixed_dictionaries({"role": st.sampled_from(ROLES) | msgpack_scalars}),
        "generate": st.fixed_dictionaries({"request": generation_requests(vocab_size) | msgpack_values}),
        "cancel": st.fixed_dictionaries({"target": targets | msgpack_scalars}),
        "status": st.just({}) | st.dictionaries(st.text(max_size=5), msgpack_scalars, max_size=2),
    }
    known = st.sampled_from(sorted(fields)).flatmap(lambda op: fields[op].map(lambda body: {"op": op, **body}))
    # `shutdown` stops the daemon by design, so the fuzzer never sends it.
    unknown = st.builds(lambda op, body: {"op": op, **body}, msgpack_scalars.filter(lambda op: op not in (*fields, "shutdown")), st.dictionaries(st.text(max_size=5), msgpack_scalars, max_size=2))
    return (known | unknown).map(lambda body: {"id": request_id, **body})


def _final_reply_id(body: bytes) -> Any:
    """Which id the daemon's final reply to this whole frame carries, by the wire's rules."""
    try:
        message = wire.decode_body(body)
    except wire.ProtocolError:
        return None
    return wire.usable_id(message.get("id"))


@st.composite
def socket_cases(draw, vocab_size: int) -> SocketCase:
    case = SocketCase()
    ids = iter(range(1, 10_000))
    sent_ids: dict[int, list[int]] = {n: [] for n in range(CONNECTIONS)}
    closed: set[int] = set()
    for _ in range(draw(st.integers(1, 6))):
        connection = draw(st.integers(0, CONNECTIONS - 1))
        if connection in closed:
            continue
        kind = draw(st.sampled_from(["request", "request", "request", "any_msgpack", "not_msgpack", "truncated", "too_long"]))
        if kind == "request":
            request_id = next(ids)
            body = msgpack.packb(draw(request_bodies(request_id, vocab_size, sent_ids[connection])), use_bin_type=True)
            sent_ids[connection].append(request_id)
            case.sends.append(Send(connection, wire.HEADER.pack(len(body)) + body, _final_reply_id(body)))
        elif kind == "any_msgpack":
            body = msgpack.packb(draw(msgpack_values), use_bin_type=True)
            case.sends.append(Send(connection, wire.HEADER.pack(len(body)) + body, _final_reply_id(body)))
        elif kind == "not_msgpack":
            body = draw(st.sampled_from([b"\xc1", b"\xc1\xc1 not msgpack", b"\x92\x01", b"\xdd\xff\xff\xff\xff"]) | st.binary(min_size=1, max_size=40))
            case.sends.append(Send(connection, wire.HEADER.pack(len(body)) + body, _final_reply_id(body)))
        elif kind == "truncated":
            body = msgpack.packb({"id": next(ids), "op": "hello"})
            cut = draw(st.integers(0, len(body) + wire.HEADER.size - 1))
            case.sends.append(Send(connection, (wire.HEADER.pack(len(body)) + body)[:cut], _NO_REPLY, ends_connection=True))
            closed.add(connection)
        else:
            length = draw(st.integers(wire.MAX_FRAME_BYTES + 1, 2**32 - 1))
            case.sends.append(Send(connection, wire.HEADER.pack(length), None, ends_connection=True))
            closed.add(connection)
    return case


# --- running a case -------------------------------------------------------------------------------


class _Client:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buffer = b""
        self.finals: Counter = Counter()  # reply id -> final replies seen
        self.closed_by_daemon = False

    def pump(self, timeout: float) -> None:
        """Read what has arrived within `timeout`, counting final replies."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        except ConnectionError:
            chunk = b""
        if not chunk:
            self.closed_by_daemon = True
            return
        self.buffer += chunk
        while len(self.buffer) >= 4 and len(self.buffer) >= 4 + struct.unpack(">I", self.buffer[:4])[0]:
            (length,) = struct.unpack(">I", self.buffer[:4])
            message = msgpack.unpackb(self.buffer[4 : 4 + length], strict_map_key=False)
            self.buffer = self.buffer[4 + length :]
            if message.get("ok") or message.get("done"):
                self.finals[message.get("id")] += 1


def run_socket_case(daemon: FuzzedDaemon, case: SocketCase) -> int:
    """Send the case and check the property; the number of whole frames sent.

    A connection that ends (a truncated frame, then the client's end of stream; or an impossible
    length, which the daemon answers and then closes it) owes no replies to the requests still
    running on it: the daemon cancels those. It must close, and the others must be answered."""
    clients = [_Client(daemon.socket) for _ in range(CONNECTIONS)]
    expected: list[Counter] = [Counter() for _ in range(CONNECTIONS)]
    ended = {send.connection for send in case.sends if send.ends_connection}
    try:
        for send in case.sends:
            clients[send.connection].sock.sendall(send.data)
            if send.answered_as is not _NO_REPLY and send.connection not in ended:
                expected[send.connection][send.answered_as] += 1
            if send.answered_as is _NO_REPLY:
                clients[send.connection].sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        for number, (client, wanted) in enumerate(zip(clients, expected)):
            while not _settled(client, wanted, number in ended):
                if daemon.process.poll() is not None:
                    raise DaemonDied(f"the daemon exited with {daemon.process.returncode}")
                if time.monotonic() > deadline:
                    raise NotAnswered(f"connection {number}: wanted final replies {dict(wanted)}, got {dict(client.finals)}; closed: {client.closed_by_daemon}")
                if client.closed_by_daemon:
                    raise NotAnswered(f"connection {number} was closed before the replies {dict(wanted)} (got {dict(client.finals)})")
                client.pump(0.2)
    finally:
        for client in clients:
            client.sock.close()
    daemon.assert_serves_a_generation()
    daemon.assert_logged_no_traceback()
    return sum(send.answered_as is not _NO_REPLY for send in case.sends)


def _settled(client: _Client, wanted: Counter, ended: bool) -> bool:
    if ended:
        return client.closed_by_daemon
    return all(client.finals[key] >= count for key, count in wanted.items())
