"""The daemon's wire format: length-prefixed msgpack maps over a private unix socket, each one a
dataclass of this module or of the generation contract (models/generation.py), unstructured by
cattrs (models/conversion.py).

    frame    = 4-byte big-endian length, then that many bytes of msgpack holding one map
    request  = {"id": int, "op": OP, **fields of OPS[OP]}
    reply    = {"id": int, "ok": true, **fields of the op's reply}          one-shot answers
             | {"id": int, "chunk": GenerationChunk}                       streamed, any number
             | {"id": int, "done": true, "result": GenerationResult}       the end of a generation
             | {"id": int | null, "done": true, "error": str}              any request that failed

`hello` carries PROTOCOL_VERSION both ways, so a newer `fimble lsp` recognises an older daemon and
replaces it. Socket paths live here too: client and daemon must agree on them.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from fimble import dirs
from fimble.models.conversion import ConversionError, structure, unstructure
from fimble.models.generation import GenerationRequest
from fimble.models.spec import Role

PROTOCOL_VERSION = 3
HEADER = struct.Struct(">I")
# The largest frame is the tokenizer sent once per client (Qwen2.5's tokenizer.json is ~7 MB).
MAX_FRAME_BYTES = 64 * 1024 * 1024


class ProtocolError(ValueError):
    """A frame that cannot be used; the connection stays open (the length prefix keeps us in sync)."""


class FrameTooLargeError(ProtocolError):
    """The length prefix is beyond MAX_FRAME_BYTES: the stream cannot be trusted, so it is closed."""


# --- requests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    client: str = ""
    client_pid: int = 0


@dataclass(frozen=True)
class ModelQuery:
    """Wait for the role's model to load; the reply is its models.generation.ModelInfo."""

    role: Role


@dataclass(frozen=True)
class Generate:
    request: GenerationRequest


@dataclass(frozen=True)
class Cancel:
    target: int  # the id of the generate request to stop


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Shutdown:
    pass


Request = Hello | ModelQuery | Generate | Cancel | Status | Shutdown
OPS: dict[str, type] = {"hello": Hello, "model": ModelQuery, "generate": Generate, "cancel": Cancel, "status": Status, "shutdown": Shutdown}
OP_NAMES = {kind: name for name, kind in OPS.items()}

# --- one-shot replies -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HelloReply:
    version: int
    pid: int


@dataclass(frozen=True)
class CancelReply:
    cancelled: bool  # False when the request had already finished


@dataclass(frozen=True)
class StatusReply:
    status: dict[str, Any]  # for display (`fimble daemon status`); its layout is Daemon.status's


@dataclass(frozen=True)
class Done:
    pass


# --- frames ---------------------------------------------------------------------------------------


def request_frame(request_id: int, request: Request) -> dict[str, Any]:
    return {"id": request_id, "op": OP_NAMES[type(request)], **unstructure(request)}


def usable_id(value: Any) -> int | None:
    """A request id is an integer; anything else (bools included) is answered under id null."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_request(message: dict[str, Any]) -> tuple[int, Request]:
    """The request's id and typed body, or ProtocolError saying what is wrong."""
    fields = dict(message)
    request_id = fields.pop("id", None)
    if usable_id(request_id) is None:
        raise ProtocolError(f"'id' must be an integer, got {request_id!r}")
    op = fields.pop("op", None)
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    try:
        return request_id, structure(fields, OPS[op], f"op {op!r}")
    except ConversionError as error:
        raise ProtocolError(str(error)) from None


def reply_frame(request_id: int, reply: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": True, **unstructure(reply)}


def parse_reply(message: dict[str, Any], kind: type) -> Any:
    fields = {key: value for key, value in message.items() if key not in ("id", "ok")}
    try:
        return structure(fields, kind, f"the daemon's {kind.__name__}")
    except ConversionError as error:
        raise ProtocolError(str(error)) from None


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
