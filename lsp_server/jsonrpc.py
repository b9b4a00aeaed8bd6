"""The JSON-RPC edge of `fimble lsp`: whatever arrives on stdin, every request gets an answer and the
server keeps serving.

pygls 2.1.1 leaves these requests unanswered, and the client then waits forever:
- params that don't fit the method's type, or no params at all (structure_message raises, and the
  read loop only logs it);
- "jsonrpc" other than "2.0", and every request after `shutdown` (handle_message just returns).

Its read loop also reads a body of any declared length in one piece: "Content-Length: 999999999999"
raised MemoryError and ended the server. FimbleProtocol answers each such request with the error
the JSON-RPC and LSP specs name, and `serve_stdio` is the read loop with bounded header lines and
bodies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Callable

import attrs
import cattrs
from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcParseError,
    JsonRpcServerNotInitialized,
)
from pygls.io_ import StdoutWriter
from pygls.protocol import LanguageServerProtocol

log = logging.getLogger(__name__)

MAX_HEADER_LINE_BYTES = 8 * 1024
# VS Code stops syncing a file to extensions above 50 MB, so no real client sends a bigger body.
MAX_BODY_BYTES = 64 * 1024 * 1024
_SKIP_CHUNK_BYTES = 1024 * 1024
_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)\s*", re.IGNORECASE)


class MessageTooLargeError(ValueError):
    """A body beyond MAX_BODY_BYTES: skipped unread, so the stream stays in step with the client."""


@attrs.define
class UnusableRequest:
    """A request whose params could not be structured: answered with `error`, never handled."""

    id: int | str | None
    error: types.ResponseError
    jsonrpc: str = "2.0"


def request_id(value: Any) -> int | str | None:
    """The id to answer with: the request's own when JSON-RPC allows it, else null (as the spec says
    for an id that cannot be detected)."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _invalid_params(error: JsonRpcException, data: dict[str, Any]) -> types.ResponseError:
    cause = error.__cause__
    if "params" not in data:
        details = "the request has no 'params'"
    elif isinstance(cause, cattrs.BaseValidationError):
        details = "; ".join(cattrs.transform_error(cause))
    else:
        details = str(cause or error)
    method = data["method"]
    return JsonRpcInvalidParams(f"invalid params for {method!r}: {details}").to_response_error()


_DROP = object()  # the refusal of a notification: nothing to answer


class FimbleProtocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as error:
            if "id" in data and "method" in data:
                return UnusableRequest(request_id(data["id"]), _invalid_params(error, data))
            raise

    def _send_response(self, msg_id, result=None, error=None) -> None:
        if msg_id is None and error is not None:
            # JSON-RPC spells an undetectable id as null; pygls's converter would leave "id" out.
            self._send_data({"jsonrpc": "2.0", "id": None, "error": self._converter.unstructure(error)})
        else:
            super()._send_response(msg_id, result, error)

    def handle_message(self, message) -> None:
        refusal = self._refusal(message)
        if refusal is None:
            super().handle_message(message)
        elif refusal is not _DROP:
            self._send_response(refusal[0], None, refusal[1])

    def _refusal(self, message) -> tuple[int | str | None, types.ResponseError] | object | None:
        """Why a message is not handled: (id, error) for a request to answer with an error, _DROP for
        a notification to ignore, None to handle it."""
        if isinstance(message, UnusableRequest):
            return message.id, message.error
        if not hasattr(message, "jsonrpc"):  # valid JSON, but not a JSON-RPC object
            identity = request_id(message.get("id")) if isinstance(message, dict) else None
            return identity, JsonRpcInvalidRequest("a message must be a JSON-RPC 2.0 object with 'jsonrpc', 'method' and, for a request, 'id'").to_response_error()
        method = getattr(message, "method", None)
        if method is None:  # a response to one of our requests
            return None
        is_request = hasattr(message, "id")
        if is_request and request_id(message.id) is None:
            return None, JsonRpcInvalidRequest(f"'id' must be an integer or a string, got {message.id!r}").to_response_error()
        if message.jsonrpc != "2.0":
            error = JsonRpcInvalidRequest(f"'jsonrpc' must be \"2.0\", got {message.jsonrpc!r}").to_response_error()
            return (request_id(message.id), error) if is_request else _DROP
        if self._shutdown and method != types.EXIT:
            error = JsonRpcInvalidRequest(f"{method!r} after 'shutdown': the server only accepts 'exit' now").to_response_error()
            return (request_id(message.id), error) if is_request else _DROP
        if self._workspace is None and method not in (types.INITIALIZE, types.EXIT):
            error = JsonRpcServerNotInitialized(f"{method!r} before 'initialize': send 'initialize' first").to_response_error()
            return (request_id(message.id), error) if is_request else _DROP
        return None


# --- the read loop --------------------------------------------------------------------------------


class _Stdin:
    """Blocking reads of stdin, each bounded, run on a thread of their own."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fimble-stdin")

    async def readline(self) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._stream.readline, MAX_HEADER_LINE_BYTES)

    async def read(self, size: int) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._stream.read, size)


async def _read_content_length(stdin: _Stdin) -> int | None:
    """The Content-Length of the next header block, or None at end of input. A block without one
    (or a line that is not a header) is skipped, as there is no body to find the end of."""
    length = None
    while line := await stdin.readline():
        if match := _CONTENT_LENGTH.fullmatch(line):
            length = int(match.group(1))
        elif not line.strip() and length is not None:
            return length
    return None


async def _skip(stdin: _Stdin, size: int) -> bool:
    """Read and drop `size` bytes; False if input ended first."""
    while size > 0:
        chunk = await stdin.read(min(size, _SKIP_CHUNK_BYTES))
        if not chunk:
            return False
        size -= len(chunk)
    return True


async def read_messages(stdin: _Stdin, protocol: FimbleProtocol, report: Callable[[Exception, type], Any]) -> None:
    while (length := await _read_content_length(stdin)) is not None:
        if length > MAX_BODY_BYTES:
            report(MessageTooLargeError(f"a message of {length} bytes is over the {MAX_BODY_BYTES}-byte limit; skipped"), JsonRpcException)
            if not await _skip(stdin, length):
                return
            continue
        body = await stdin.read(length)
        if len(body) < length:
            return  # input ended mid-message
        try:
            message = json.loads(body, object_hook=protocol.structure_message)
        except ValueError as error:  # also UnicodeDecodeError
            protocol._send_response(None, None, JsonRpcParseError(f"not valid JSON: {error}").to_response_error())
            report(error, JsonRpcException)
            continue
        except JsonRpcException as error:  # a notification whose params don't fit its method
            log.warning("dropped a message: %s", error)
            report(error, JsonRpcException)
            continue
        try:
            protocol.handle_message(message)
        except Exception as error:  # noqa: BLE001 - one bad message must not end the server
            log.exception("unable to handle a message")
            report(error, JsonRpcException)


def serve_stdio(server) -> None:
    """pygls's LanguageServer.start_io, with read_messages as its loop."""
    server.protocol.set_writer(StdoutWriter(sys.stdout.buffer))
    try:
        asyncio.run(read_messages(_Stdin(sys.stdin.buffer), server.protocol, server.report_server_error))
    except BrokenPipeError:
        log.error("the client closed stdout; shutting down")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()
