"""A role served by an OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's server, Ollama):

    completions  POST {source}/completions       the raw FIM prompt as text, streamed (SSE)
    chat         POST {source}/chat/completions  the conversation as messages; the server applies
                                                 the model's chat template

Greedy (temperature 0), with the request's stop strings, and logprobs where the server gives them
(abstaining needs them). The stop rules the server cannot apply (stop strings only after the first
non-whitespace, the end of a multi-line block) are applied here to the streamed text, as the engine
does (models/stopping.py). Stopping, cancelling or timing out closes the stream, and the servers
named above abort a request whose client has gone.

The API key comes from the environment variable the role names (`api_key_env`); it is sent as a
bearer token and never written to a log or an error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator

import httpx

from fimble.models.backend import ApproximateTokenizer, ChunkCallback, ServedModel, Tokenizer
from fimble.models.families import detect_family, family_named, fim_warning
from fimble.models.generation import (
    BackendError,
    BackendUnavailableError,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    GenerationStats,
    ModelInfo,
)
from fimble.models.spec import ModelSpec, Role
from fimble.models.stopping import first_stop, streamable_length

log = logging.getLogger(__name__)

# Connection errors only (refused, unreachable, connect timeout): the request never reached the
# server, so sending it again cannot run it twice.
CONNECT_RETRIES = 2
# OpenAI's API takes at most 4 stop strings; vLLM, SGLang and llama.cpp take more. The rest are
# applied here, so sending the first few only costs a few tokens past the stop.
MAX_SERVER_STOPS = 4


class RemoteRequestError(BackendError):
    """The server refused the request (bad key, unknown model or path, too many requests, a failure
    of its own); the message says what to change."""


class RemoteUnavailableError(BackendUnavailableError):
    """The server cannot be reached or did not answer in time."""


@dataclass
class _Stream:
    """What has come back of one streamed request so far."""

    text: str = ""
    streamed: str = ""  # the part of `text` handed to on_chunk
    logprobs: list[float] | None = None
    chunks: int = 0
    first_at: float | None = None
    server_finish: str | None = None
    usage: dict | None = None
    timings: dict | None = None  # llama.cpp's llama-server: its own timings and cache use


def server_cached_tokens(usage: dict | None, timings: dict | None) -> int:
    """The prompt tokens the server took from its prefix cache, where it says: the OpenAI field
    (vLLM, SGLang), or llama-server's own timings. 0 where it doesn't (llama-cpp-python)."""
    details = (usage or {}).get("prompt_tokens_details") or {}
    for value in (details.get("cached_tokens") if isinstance(details, dict) else None, (timings or {}).get("cache_n")):
        if isinstance(value, int) and value >= 0:
            return value
    return 0


class RemoteBackend:
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.base_url = spec.source.rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self._served: ServedModel | None = None
        self._per_role: dict[Role, ServedModel] = {}  # the same model, with each role's warnings
        self._model_lock = asyncio.Lock()
        self._logprobs = spec.logprobs  # turned off when the server refuses them

    # --- the model --------------------------------------------------------------------------------

    async def model(self, role: Role) -> ServedModel:
        async with self._model_lock:  # one GET /models, however many requests wait for it
            if self._served is None:
                self._served = await self._serve()
                self._per_role.clear()
        if role not in self._per_role:
            warning = fim_warning(self._served.family, self._served.info.name) if role != Role.CHAT else ""
            self._per_role[role] = replace(self._served, info=replace(self._served.info, warnings=(warning,) if warning else ()))
        return self._per_role[role]

    async def _serve(self) -> ServedModel:
        name = self.spec.model or await self._first_listed_model()
        family = family_named(self.spec.family) if self.spec.family else detect_family(name)
        info = ModelInfo(name=name, family=family.name, context_length=self.spec.context_length, takes_text=not self.spec.send_token_ids, logprobs=self._logprobs)
        return ServedModel(info, self._tokenizer(), family)

    def _tokenizer(self) -> Tokenizer:
        if not self.spec.tokenizer:
            return ApproximateTokenizer()
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.spec.tokenizer, local_files_only=True)
        except OSError as error:
            raise RemoteRequestError(
                f"tokenizer = {self.spec.tokenizer!r} could not be loaded ({error}); give a local directory with a "
                "tokenizer.json, a hub id already in the hub cache, or leave tokenizer out"
            ) from None

    async def _first_listed_model(self) -> str:
        response = await self._request("GET", "/models")
        models = [entry.get("id") for entry in response.json().get("data", []) if isinstance(entry, dict)]
        if not models or not isinstance(models[0], str):
            raise RemoteRequestError(f"{self.base_url}/models lists no model; set model = \"...\" for this role")
        return models[0]

    async def probe(self) -> str:
        """One line on what the server offers, for `fimble models`: its model, and logprobs."""
        served = await self.model(Role.SINGLE_LINE)
        result = await self.generate(GenerationRequest(Role.SINGLE_LINE, 1, prompt_text="def"))
        if result.finish_reason == "error":
            return f"error: {result.error}"
        abstains = "logprobs: yes" if result.logprobs else "no logprobs: never abstains"
        return f"{served.info.name} ({served.family.name}), {abstains}"

    # --- generating -------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest, on_chunk: ChunkCallback | None = None) -> GenerationResult:
        served = await self.model(request.role)
        started = time.perf_counter()
        state = _Stream()
        try:
            finish = await self._stream(served, request, state, on_chunk)
        except BackendError as error:
            if state.text:  # what came before the failure is kept, as the engine keeps it
                return self._result(request, state, "error", started, error=str(error))
            raise
        return self._result(request, state, finish, started)

    async def _stream(self, served: ServedModel, request: GenerationRequest, state: _Stream, on_chunk: ChunkCallback | None) -> FinishReason:
        chat = bool(request.messages)
        path, body = ("/chat/completions", self._chat_body(served, request)) if chat else ("/completions", self._completion_body(served, request))
        async for event in self._events(path, body):
            choice = (event.get("choices") or [{}])[0]
            piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            state.usage = event.get("usage") or state.usage
            state.timings = event.get("timings") or state.timings
            # [DONE] ends the stream too; a finish reason seen before it is the one that counts.
            state.server_finish = state.server_finish or choice.get("finish_reason")
            self._take_logprobs(choice, state)
            if not piece:
                continue
            state.first_at = state.first_at or time.perf_counter()
            state.chunks += 1
            state.text += piece
            stop_at = first_stop(state.text, request.stop)
            if stop_at is not None:  # leaving the loop closes the stream: the server stops
                state.text = state.text[:stop_at]
                self._emit(state, len(state.text), on_chunk)
                return "stop_string"
            self._emit(state, streamable_length(state.text, request.stop), on_chunk)
        self._emit(state, len(state.text), on_chunk)
        if state.server_finish is None:
            # llama-cpp-python, for one, ends the stream this way when generation fails (a prompt
            # over its context, say): an answer with neither a finish reason nor [DONE].
            raise RemoteRequestError(f"{self.base_url}{path} ended the answer without finishing it; see the server's log")
        return "length" if state.server_finish == "length" else "stop_token"

    def _emit(self, state: _Stream, upto: int, on_chunk: ChunkCallback | None) -> None:
        if upto > len(state.streamed):
            piece = state.text[len(state.streamed) : upto]
            state.streamed = state.text[:upto]
            if on_chunk is not None:
                on_chunk(GenerationChunk(piece))

    def _take_logprobs(self, choice: dict, state: _Stream) -> None:
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("token_logprobs"), list):
            state.logprobs = (state.logprobs or []) + [float(x) for x in logprobs["token_logprobs"] if isinstance(x, (int, float))]

    def _completion_body(self, served: ServedModel, request: GenerationRequest) -> dict[str, Any]:
        body = self._common_body(served, request, served.family.stop_strings)
        # A request built without ids (the probe's) goes as text either way.
        body["prompt"] = list(request.prompt_ids) if self.spec.send_token_ids and request.prompt_ids else request.prompt_text
        if self._logprobs:
            body["logprobs"] = 1
        return body

    def _chat_body(self, served: ServedModel, request: GenerationRequest) -> dict[str, Any]:
        body = self._common_body(served, request, served.family.chat_stop)
        body["messages"] = [{"role": message.role, "content": message.content} for message in request.messages]
        return body

    def _common_body(self, served: ServedModel, request: GenerationRequest, family_stops: tuple[str, ...]) -> dict[str, Any]:
        # With after_text the request's own stop strings may match the leading line break of a
        # healed line start, which the server would stop at: those are applied here only.
        own = () if request.stop.after_text else request.stop.strings
        stops = list(dict.fromkeys((*own, *family_stops)))[:MAX_SERVER_STOPS]
        return {"model": served.info.name, "max_tokens": request.max_new_tokens, "temperature": 0, "stream": True, "stop": stops}

    def _result(self, request: GenerationRequest, state: _Stream, finish: FinishReason, started: float, error: str | None = None) -> GenerationResult:
        now = time.perf_counter()
        generated = int((state.usage or {}).get("completion_tokens") or state.chunks)
        decode = (generated - 1) / (now - state.first_at) if state.first_at and generated > 1 and now > state.first_at else None
        prompt_tokens = int((state.usage or {}).get("prompt_tokens") or len(request.prompt_ids))
        stats = GenerationStats(
            prompt_tokens=prompt_tokens,
            cached_tokens=server_cached_tokens(state.usage, state.timings),
            generated_tokens=generated,
            ttft_s=state.first_at - started if state.first_at else None,
            decode_tok_s=decode,
            total_s=now - started,
        )
        return GenerationResult(state.streamed or state.text, finish, stats, logprobs=tuple(state.logprobs or ()), error=error)

    # --- HTTP -------------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: Any = self.spec.ca_bundle or True
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=httpx.Timeout(self.spec.read_timeout_s, connect=self.spec.connect_timeout_s),
                verify=verify,
                # HTTPS_PROXY, NO_PROXY from the environment. (httpx drops them for a client given a
                # transport of its own, so the connection retries are done here, not by a transport.)
                trust_env=True,
                headers=self._headers(),
            )
        return self._client

    def _headers(self) -> dict[str, str]:
        if not self.spec.api_key_env:
            return {}
        key = os.environ.get(self.spec.api_key_env, "")
        if not key:
            raise RemoteRequestError(
                f"the environment variable {self.spec.api_key_env} (api_key_env of the role served by {self.base_url}) "
                "is not set; export it with the server's API key, in the environment the editor starts from"
            )
        return {"Authorization": f"Bearer {key}"}

    async def _request(self, method: str, path: str) -> httpx.Response:
        for attempt in range(CONNECT_RETRIES + 1):
            try:
                response = await self._http().request(method, path)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as error:
                # RemoteProtocolError: a kept-alive connection the server closed (see _events); a GET.
                await self._before_retry(attempt, error)
            except httpx.HTTPError as error:
                raise self._unavailable(error) from None
        if response.status_code >= 400:
            raise self._refused(response.status_code, response.text, path)
        return response

    async def _events(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The server-sent events of a streamed request, as parsed JSON.

        A connection error, or a server that closed the connection before any answer, is tried
        again (CONNECT_RETRIES times). Servers may close a kept-alive connection at any time
        (llama-server advertises keep-alive, yet closes it after each streamed answer), and a
        request sent on it as it closes gets "Server disconnected without sending a response".
        Nothing of it was answered or generated, so sending it again is safe."""
        for attempt in range(CONNECT_RETRIES + 1):
            answered = False
            try:
                async with self._http().stream("POST", path, json=body) as response:
                    answered = True
                    if response.status_code >= 400:
                        text = (await response.aread()).decode("utf-8", errors="replace")
                        if self._refuses_logprobs(body, response.status_code, text):
                            break  # asked again below, without
                        if isinstance(body.get("prompt"), list) and wants_a_text_prompt(response.status_code, text):
                            raise self._refuses_token_ids(response.status_code, text, path)
                        raise self._refused(response.status_code, text, path)
                    async for line in response.aiter_lines():
                        if (event := self._event(line, path)) is not None:
                            yield event
                return
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:  # before anything was streamed
                await self._before_retry(attempt, error)
            except httpx.RemoteProtocolError as error:
                if answered:
                    raise self._unavailable(error) from None
                log.info("%s%s closed the connection without answering; sending the request again", self.base_url, path)
                if attempt > 0:  # no answer began (see the docstring): at once, on a new connection
                    await self._before_retry(attempt, error)
            except httpx.HTTPError as error:
                raise self._unavailable(error) from None
        async for event in self._events(path, {key: value for key, value in body.items() if key != "logprobs"}):
            yield event

    def _event(self, line: str, path: str) -> dict[str, Any] | None:
        """One line of the stream as an event; None for comments (": ping"), names and blank lines."""
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            return {"choices": [{"finish_reason": "stop"}]}
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise RemoteRequestError(f"{self.base_url}{path} sent an event that is not JSON: {data[:80]!r}") from None
        if isinstance(event, dict) and "error" in event:
            raise RemoteRequestError(f"{self.base_url}{path} failed mid-answer: {self._redact(str(event['error']))[:200]}")
        return event if isinstance(event, dict) else None

    def _refuses_logprobs(self, body: dict[str, Any], status: int, text: str) -> bool:
        if not (self._logprobs and "logprobs" in body and status in (400, 422) and "logprob" in text.lower()):
            return False
        self._logprobs = False  # this server offers none: ask without from now on
        self._served = None
        log.warning("%s refuses logprobs: completions through it never abstain", self.base_url)
        return True

    async def _before_retry(self, attempt: int, error: httpx.HTTPError) -> None:
        if attempt == CONNECT_RETRIES:
            raise self._unavailable(error) from None
        await asyncio.sleep(0.1 * 2**attempt)

    # --- errors that say what to change -----------------------------------------------------------

    def _unavailable(self, error: httpx.HTTPError) -> RemoteUnavailableError:
        where = f"the model server at {self.base_url}"
        if isinstance(error, httpx.TimeoutException):
            kind = "connect" if isinstance(error, httpx.ConnectTimeout) else "read"
            limit = self.spec.connect_timeout_s if kind == "connect" else self.spec.read_timeout_s
            return RemoteUnavailableError(
                f"{where} did not answer within {limit:g} s; check that it is running and not overloaded, "
                f"or raise {kind}_timeout_s for this role in the Fimble config"
            )
        reason = type(error).__name__
        return RemoteUnavailableError(
            f"cannot reach {where} ({reason}: {self._redact(str(error)) or 'no answer'}); start the server, or fix "
            "source for this role in the Fimble config"
        )

    def _refused(self, status: int, text: str, path: str) -> RemoteRequestError:
        detail = self._redact(_error_detail(text))[:200]
        where = f"{self.base_url}{path}"
        if status in (401, 403):
            fix = f"set {self.spec.api_key_env} to a valid key" if self.spec.api_key_env else 'set api_key_env = "NAME" for this role and put the key in that variable'
            return RemoteRequestError(f"{where} refused the API key ({status}: {detail}); {fix}")
        if status == 404:
            return RemoteRequestError(
                f"{where} answered 404 ({detail}); source should be the server's OpenAI base URL (ending in /v1) and model "
                f"one of the names GET {self.base_url}/models lists"
            )
        if status == 429:
            return RemoteRequestError(f"{where} is busy (429: {detail}); wait, or raise the server's rate limit")
        if status >= 500:
            return RemoteRequestError(f"{where} failed ({status}: {detail}); see the server's log")
        return RemoteRequestError(f"{where} refused the request ({status}: {detail})")

    def _refuses_token_ids(self, status: int, text: str, path: str) -> RemoteRequestError:
        return RemoteRequestError(
            f"{self.base_url}{path} refused the prompt as token ids ({status}: {self._redact(_error_detail(text))[:200]}); "
            "set send_token_ids = false for this role: this server takes the prompt as text"
        )

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.spec.api_key_env, "") if self.spec.api_key_env else ""
        return text.replace(key, "***") if key else text

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def wants_a_text_prompt(status: int, text: str) -> bool:
    """Whether an error answer says that `prompt` must be a string: llama-cpp-python's server
    answers "prompt ... Input should be a valid string" with a 500, and others a 400 or 422 naming
    the field and the type (TGI "expected a string", Ollama "into ... of type string"). A prompt
    over the context is a 400 that names neither a string nor a type."""
    return status in (400, 422, 500) and "prompt" in text and "string" in text.lower()


def _error_detail(text: str) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}, {"detail": ...})."""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text.strip() or "no details"
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)
    return str(body)
