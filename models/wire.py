"""The daemon's wire format: length-prefixed msgpack maps over a private unix socket.

    frame   = 4-byte big-endian length, then that many bytes of msgpack holding one map
    request = {"id": int, "op": str, ...}         ops: hello, model, generate, cancel, status, shutdown
    reply   = {"id": int, "ok": true, ...}        one-shot answers
            | {"id": int, "text": str}            streamed generation text, any number of times
            | {"id": int, "done": true, "result": {...}} | {"id": int, "done": true, "error": str}

`hello` carries PROTOCOL_VERSION both ways, so a newer `fimble lsp` recognises an older daemon and
replaces it. Socket paths live here too: client and daemon must agree on them.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import msgpack

from fimble import dirs

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
# The largest frame is the tokenizer sent once per client (Qwen2.5's tokenizer.json is ~7 MB).
MAX_FRAME_BYTES = 64 * 1024 * 1024
OPS = ("hello", "model", "generate", "cancel", "status", "shutdown")


class ProtocolError(ValueError):
    """A frame that cannot be used; the connection stays open (the length prefix keeps us in sync)."""


class FrameTooLargeError(ProtocolError):
    """The length prefix is beyond MAX_FRAME_BYTES: the stream cannot be trusted, so it is closed."""


def socket_path() -> Path:
    return dirs.runtime_dir() / "daemon.sock"


def encode_frame(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise FrameTooLargeError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next message. Raises asyncio.IncompleteReadError at end of stream, FrameTooLargeError
    for an impossible length, and ProtocolError for a whole frame that is not a msgpack map."""
    (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > MAX_FRAME_BYTES:
        raise FrameTooLargeError(f"frame length {length} exceeds {MAX_FRAME_BYTES} bytes")
    return decode_body(await reader.readexactly(length))


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as error:
        raise ProtocolError(f"frame is not valid msgpack: {error}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame must hold a map, got {type(message).__name__}")
    return message


def validate_request(message: dict[str, Any]) -> tuple[int, str]:
    """The request's id and op, or ProtocolError naming what is wrong."""
    request_id = message.get("id")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise ProtocolError(f"'id' must be an integer, got {request_id!r}")
    op = message.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    return request_id, op


def field(message: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """A typed field of a request; ProtocolError when it is missing or of the wrong type."""
    if name not in message:
        if default is ...:
            raise ProtocolError(f"'{name}' is required")
        return default
    value = message[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"'{name}' has the wrong type: {type(value).__name__}")
    return value
