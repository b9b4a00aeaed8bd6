"""The remote backend (models/remote.py) against a real OpenAI-compatible server started by the
test: llama-cpp-python's server with the embedded model (tests/llama_server.py). Completions,
chat, a cancel mid-stream, the server killed and back, a wrong key, a timeout, a wrong URL; and
nothing left running on the server afterwards, by the server's own accounting."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from fimble.models.families import QWEN25_CODER
from fimble.models.generation import ChatMessage, GenerationRequest, StopRules
from fimble.models.remote import RemoteBackend, RemoteRequestError, RemoteUnavailableError, wants_a_text_prompt, server_cached_tokens
from fimble.models.spec import ModelSpec, Role
from tests.conftest import REMOTE_KEY_ENV
from tests.llama_server import free_port

FIB = "<|fim_prefix|>def fibonacci(n):\n    if n < 2:\n        return n\n    return <|fim_suffix|>\n<|fim_middle|>"
# A prompt the model goes on with for as long as it may: a long, regular list.
ENDLESS = "<|fim_prefix|>PRIMES = [\n    2,\n    3,\n    5,\n    7,\n<|fim_suffix|><|fim_middle|>"


def spec_for(server, **overrides) -> ModelSpec:
    fields = dict(source=server.base_url, api_key_env=REMOTE_KEY_ENV, family="qwen2.5-coder", read_timeout_s=120.0)
    return ModelSpec(**{**fields, **overrides})


def completion(prompt: str, max_new_tokens: int = 24, **stop) -> GenerationRequest:
    return GenerationRequest(Role.SINGLE_LINE, max_new_tokens, prompt_text=prompt, stop=StopRules(**stop))


class ServerLog:
    """What the server writes to its log from now on: a line per client that went away, and
    llama.cpp's timing lines for each generation that ran to its end."""

    def __init__(self, server):
        self.path = server.log
        self.start = self.path.stat().st_size

    def new(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.start)
            return log.read().decode("utf-8", errors="replace")

    def disconnects(self) -> int:
        return self.new().count("Disconnected from client")

    def finished_generations(self) -> int:
        return len(re.findall(r"\beval time =\s+[\d.]+ ms /\s+\d+ runs", self.new()))


@pytest.fixture
async def remote(llama_server):
    backend = RemoteBackend(spec_for(llama_server))
    yield backend
    await backend.close()


async def test_a_completion_streams_with_logprobs(remote):
    chunks = []
    result = await remote.generate(completion(FIB, strings=("\n",)), chunks.append)
    assert result.text.replace(" ", "") == "fibonacci(n-1)+fibonacci(n-2)"
    assert "".join(chunk.text for chunk in chunks) == result.text and len(chunks) > 1
    assert result.finish_reason in ("stop_token", "stop_string")
    assert len(result.logprobs) >= result.stats.generated_tokens > 1 and result.mean_logprob < 0
    assert result.stats.ttft_s is not None and result.stats.total_s >= result.stats.ttft_s
    served = await remote.model(Role.SINGLE_LINE)
    assert served.family is QWEN25_CODER and served.info.name == "qwen2.5-coder-0.5b-instruct"


async def test_a_stop_string_after_text_lets_the_line_start_first(remote):
    # A healed line start: the answer begins with the line break the stop string is.
    prompt = "<|fim_prefix|>def add(a, b):<|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    result = await remote.generate(completion(prompt, strings=("\n",), after_text=True))
    assert result.text.startswith("\n") and result.text.strip() and "\n" not in result.text.strip()


async def test_chat_streams_an_answer_to_messages(remote):
    messages = (ChatMessage("system", "Answer in one short sentence."), ChatMessage("user", "What does Python's len() return?"))
    chunks = []
    request = GenerationRequest(Role.CHAT, 64, messages=messages, stop=StopRules(strings=QWEN25_CODER.chat_stop))
    result = await remote.generate(request, chunks.append)
    assert result.text.strip() and "".join(chunk.text for chunk in chunks) == result.text
    assert "<|im_end|>" not in result.text and result.finish_reason in ("stop_token", "length")


async def test_a_cancel_mid_stream_stops_the_server_and_the_next_request_is_served(remote, llama_server):
    log = ServerLog(llama_server)
    first_chunk = asyncio.Event()
    task = asyncio.ensure_future(remote.generate(completion(ENDLESS, max_new_tokens=2000), lambda chunk: first_chunk.set()))
    await asyncio.wait_for(first_chunk.wait(), 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await remote.generate(completion(FIB, strings=("\n",)))
    assert result.text.strip()
    # By the server's own record: it dropped the cancelled request, which never ran to its end
    # (the server runs one generation at a time, so the follow-up came after it let go).
    assert log.disconnects() == 1
    assert log.finished_generations() == 1


async def test_the_server_killed_is_a_clear_error_and_it_recovers_when_back(remote, llama_server):
    llama_server.stop()
    try:
        with pytest.raises(RemoteUnavailableError, match=r"cannot reach the model server at http://127\.0\.0\.1:\d+/v1 .*start the server"):
            await remote.generate(completion(FIB, strings=("\n",)))
    finally:
        llama_server.start()
    result = await remote.generate(completion(FIB, strings=("\n",)))
    assert result.text.strip()


async def test_a_wrong_api_key_says_which_variable_to_fix_and_never_shows_the_key(llama_server, monkeypatch):
    monkeypatch.setenv("FIMBLE_WRONG_KEY", "sk-wrong-0123456789")
    backend = RemoteBackend(spec_for(llama_server, api_key_env="FIMBLE_WRONG_KEY"))
    try:
        with pytest.raises(RemoteRequestError) as caught:
            await backend.generate(completion(FIB))
    finally:
        await backend.close()
    message = str(caught.value)
    assert "refused the API key (401" in message and "set FIMBLE_WRONG_KEY to a valid key" in message
    assert "sk-wrong-0123456789" not in message and os.environ[REMOTE_KEY_ENV] not in message


async def test_a_missing_key_variable_says_what_to_export(llama_server, monkeypatch):
    monkeypatch.delenv("FIMBLE_UNSET_KEY", raising=False)
    backend = RemoteBackend(spec_for(llama_server, api_key_env="FIMBLE_UNSET_KEY"))
    with pytest.raises(RemoteRequestError, match="FIMBLE_UNSET_KEY .* is not set; export it"):
        await backend.generate(completion(FIB))


async def test_a_server_slower_than_the_timeout_is_a_clear_error_and_the_request_ends_there(llama_server, remote):
    log = ServerLog(llama_server)
    # A new prompt of about 700 tokens: its prefill alone takes seconds, far over the timeout.
    prompt = "<|fim_prefix|>" + "".join(f"value_{i} = compute({i}) * {i % 7}\n" for i in range(50)) + "<|fim_suffix|><|fim_middle|>"
    backend = RemoteBackend(spec_for(llama_server, read_timeout_s=0.2))
    try:
        with pytest.raises(RemoteUnavailableError, match=r"did not answer within 0\.2 s.*raise read_timeout_s"):
            await backend.generate(completion(prompt, max_new_tokens=2000))
    finally:
        await backend.close()
    assert (await remote.generate(completion(FIB, strings=("\n",)))).text.strip()
    # The server noticed the client had gone at its first token, and never finished that request.
    assert log.disconnects() == 1 and log.finished_generations() == 1


async def test_a_server_that_takes_only_text_refuses_token_ids_with_a_message_that_says_what_to_set(llama_server, tiny_checkpoint):
    # llama-cpp-python's server validates `prompt` as text; llama-server and vLLM would take the ids.
    backend = RemoteBackend(spec_for(llama_server, send_token_ids=True, tokenizer=str(tiny_checkpoint)))
    try:
        assert not (await backend.model(Role.SINGLE_LINE)).info.takes_text
        with pytest.raises(RemoteRequestError, match=r"(?s)refused the prompt as token ids \(500.*set send_token_ids = false for this role"):
            await backend.generate(GenerationRequest(Role.SINGLE_LINE, 8, prompt_ids=(1, 2, 3), prompt_text=FIB))
    finally:
        await backend.close()


def test_only_an_error_about_the_prompts_type_is_taken_for_a_server_that_wants_text():
    assert wants_a_text_prompt(422, '{"error": "Failed to deserialize the JSON body: prompt: invalid type: sequence, expected a string"}')
    # A prompt over the context (vLLM's words) is another refusal, whatever form the prompt took.
    context = "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens in the prompt"
    assert not wants_a_text_prompt(400, context)


def test_token_ids_need_the_models_tokenizer():
    with pytest.raises(ValueError, match="send_token_ids needs tokenizer"):
        ModelSpec(source="http://127.0.0.1:8080/v1", send_token_ids=True)


async def test_a_wrong_base_url_says_what_the_source_should_be(llama_server):
    backend = RemoteBackend(spec_for(llama_server, source=llama_server.base_url.removesuffix("/v1") + "/api"))
    try:
        with pytest.raises(RemoteRequestError, match=r"answered 404 .*ending in /v1"):
            await backend.generate(completion(FIB))
    finally:
        await backend.close()


async def test_a_prompt_over_the_servers_context_is_an_error_not_an_empty_answer(remote):
    prompt = "<|fim_prefix|>" + "".join(f"value_{i} = compute({i}) * {i % 7}\n" for i in range(400)) + "<|fim_suffix|><|fim_middle|>"
    with pytest.raises(RemoteRequestError, match="ended the answer without finishing it; see the server's log"):
        await remote.generate(completion(prompt))


async def test_proxies_come_from_the_environment(llama_server, monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"  # a proxy that is not there
    monkeypatch.setenv("HTTP_PROXY", closed)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    through_proxy = RemoteBackend(spec_for(llama_server))
    try:
        with pytest.raises(RemoteUnavailableError, match="cannot reach"):
            await through_proxy.generate(completion(FIB))
    finally:
        await through_proxy.close()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = RemoteBackend(spec_for(llama_server))
    try:
        assert (await direct.generate(completion(FIB, strings=("\n",)))).text.strip()
    finally:
        await direct.close()


def test_the_cached_prompt_tokens_come_from_whichever_field_the_server_fills():
    """vLLM and SGLang say it in OpenAI's usage field, llama-server in its own timings, and
    llama-cpp-python not at all (its answers here carry neither)."""
    assert server_cached_tokens({"prompt_tokens": 900, "prompt_tokens_details": {"cached_tokens": 850}}, None) == 850
    assert server_cached_tokens({"prompt_tokens": 900}, {"cache_n": 880, "prompt_n": 20}) == 880
    assert server_cached_tokens({"prompt_tokens": 900, "prompt_tokens_details": None}, None) == 0
    assert server_cached_tokens(None, None) == 0


class OneAnswerPerConnection:
    """A real HTTP server on 127.0.0.1 that, like a server at its keep-alive limit, answers the
    first request on each connection, says the connection stays open, then closes it unanswered
    when the next request comes on it."""

    ANSWER = b'data: {"choices":[{"text":"fib(n - 1)","finish_reason":null}]}\n\ndata: {"choices":[{"text":"","finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'

    def __init__(self):
        self.connections = 0
        self.answered = 0

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        for request_number in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
            await reader.readexactly(length)
            if request_number == 1:
                break  # the second request on this connection: closed without an answer
            self.answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(self.ANSWER), self.ANSWER))
            await writer.drain()
        writer.close()


async def test_a_request_on_a_kept_alive_connection_the_server_closed_is_sent_again(monkeypatch):
    monkeypatch.setenv(REMOTE_KEY_ENV, "k")
    server = OneAnswerPerConnection()
    async with server as base_url:
        backend = RemoteBackend(ModelSpec(source=base_url, api_key_env=REMOTE_KEY_ENV, family="qwen2.5-coder", model="m"))
        try:
            texts = [(await backend.generate(completion(FIB))).text for _ in range(3)]
        finally:
            await backend.close()
    assert texts == ["fib(n - 1)"] * 3
    assert server.answered == 3 and server.connections >= 3  # each later request went out again, on a new connection
