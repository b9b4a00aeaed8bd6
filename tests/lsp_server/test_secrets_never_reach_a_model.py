"""No secret reaches a model, through the real `fimble lsp`: every role is a real OpenAI-compatible
server (tests/llama_server.py) behind a recording proxy (tests/recording_proxy.py), the workspace
is the secrets corpus (tests/context/secrets_corpus.py) with ordinary code that uses the secrets'
names, and each path by which file text can reach a prompt is driven in turn: completion with the
index and retrieval, open buffers of secret files, `@file:`, chat attachments, code actions. Every
request the server received is searched for every secret value.

What the user sees: in a secret file, no completion (and, when they asked for one, a message
saying why); in chat, the error that the file is not sent; no code actions on a secret."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tempfile

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from tests.conftest import REMOTE_KEY_ENV
from tests.context.secrets_corpus import SecretsCorpus, build_secrets_corpus
from tests.lsp_server.conftest import FIMBLE, QUIET, inline_at, open_document, start_client
from tests.lsp_server.test_chat import Chat
from tests.recording_proxy import RecordingProxy

# Secrets opened as editor buffers: by name, by contents in code, and by a name only.
OPENED_SECRETS = (".env", "billing/config.py", "notify/slack.js", "deploy/kubeconfig.yaml", ".env.production")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SecretsCorpus:
    return build_secrets_corpus(tmp_path_factory.mktemp("secrets") / "shop")


@pytest.fixture(scope="module")
def proxy(llama_server):
    proxy = RecordingProxy(llama_server.base_url.removesuffix("/v1")).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def secrets_env(proxy, llama_server, tmp_path_factory):
    """Every role on the server, through the proxy: nothing is generated anywhere else."""
    root = tmp_path_factory.mktemp("secrets-env")
    remote = f'source = "{proxy.base_url}"\napi_key_env = "{REMOTE_KEY_ENV}"\nlogprobs = false\n'
    config = root / "config.toml"
    config.write_text("".join(f"[models.{role}]\n{remote}\n" for role in ("single_line", "multi_line", "chat")))
    with tempfile.TemporaryDirectory(prefix="fimble-sec-") as runtime_dir:  # short: AF_UNIX paths
        env = dict(os.environ, FIMBLE_CONFIG=str(config), FIMBLE_RUNTIME_DIR=runtime_dir, FIMBLE_CACHE_DIR=str(root / "cache"))
        env.update(FIMBLE_DATA_DIR=str(root / "data"), **{REMOTE_KEY_ENV: llama_server.api_key})
        yield env
        subprocess.run([*FIMBLE, "daemon", "stop"], env=env, capture_output=True, timeout=60)


async def started(env: dict, corpus: SecretsCorpus) -> Chat:
    """`fimble lsp` on the corpus, its index built."""
    chat = Chat(await start_client(env, initialization_options=QUIET, root=corpus.root))
    deadline = asyncio.get_running_loop().time() + 60
    while not any(getattr(value, "kind", None) == "end" for value in chat.client.progress_reports.get("fimble-index", [])):
        assert asyncio.get_running_loop().time() < deadline, "the index was not built"
        await asyncio.sleep(0.05)
    assert chat.client.progress_reports["fimble-index"][-1].message.startswith(f"{len(corpus.ordinary)} files")
    return chat


def open_file(chat: Chat, corpus: SecretsCorpus, relative: str) -> str:
    uri = (corpus.root / relative).as_uri()
    language = {"py": "python", "js": "javascript", "ts": "typescript"}.get(relative.rsplit(".", 1)[-1], "plaintext")
    open_document(chat.client, uri, (corpus.root / relative).read_text(), language_id=language)
    return uri


def assert_no_leak(proxy: RecordingProxy, corpus: SecretsCorpus) -> None:
    leaks = corpus.leaks_in(proxy.sent_text())
    assert leaks == [], f"secret values sent to the model: {leaks[:5]}"


async def test_completions_use_the_index_and_open_buffers_but_no_secret(secrets_env, corpus, proxy):
    chat = await started(secrets_env, corpus)
    try:
        for relative in OPENED_SECRETS:  # open, so they would be "recent files" for the context
            open_file(chat, corpus, relative)
        uri = open_file(chat, corpus, "main.py")
        before = len(proxy.model_requests())
        main = (corpus.root / "main.py").read_text().splitlines()
        # A line that calls into other files, so the cursor needs context.
        line = next(number for number, text in enumerate(main) if "receipt = charge_customer(slugify" in text)
        await inline_at(chat.client, uri, line, len(main[line]), invoked=True)
        sent = proxy.model_requests()[before:]
        assert sent, "the completion reached the server"
        # Retrieval ran: the ordinary file main.py uses is in the prompt, the secret files it imports are not.
        assert any("def slugify" in request.text() for request in sent)
        assert_no_leak(proxy, corpus)
    finally:
        await chat.stop()


async def test_a_secret_buffer_gets_no_completion_and_sends_nothing(secrets_env, corpus, proxy):
    chat = await started(secrets_env, corpus)
    try:
        before = len(proxy.model_requests())
        for relative in OPENED_SECRETS:
            uri = open_file(chat, corpus, relative)
            lines = (corpus.root / relative).read_text().splitlines()
            for invoked in (False, True):
                answer = await inline_at(chat.client, uri, 1, len(lines[1]), invoked=invoked)
                assert answer is None or not answer.items, relative
        # A buffer that gets a secret by an edit is refused from that edit on.
        uri = open_file(chat, corpus, "util/text.py")
        pasted = 'STRIPE = "sk_live_' + "4eC39HqLyjWDarjtT1zdp7dc" + '"\n'
        chat.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=pasted + (corpus.root / "util/text.py").read_text())],
            )
        )
        answer = await inline_at(chat.client, uri, 2, 4, invoked=True)
        assert answer is None or not answer.items
        assert proxy.model_requests()[before:] == [], "a secret buffer's completion reached the server"
        told = [message.message for message in chat.client.messages]
        assert any("no completions in this file, which holds secrets" in message for message in told), told
        assert_no_leak(proxy, corpus)
    finally:
        await chat.stop()


async def test_chat_refuses_secret_files_and_retrieves_none(secrets_env, corpus, proxy):
    chat = await started(secrets_env, corpus)
    try:
        config_uri = open_file(chat, corpus, "billing/config.py")
        before = len(proxy.model_requests())
        for reference in (".env", "billing/config.py", ".kube/config", ".npmrc", "gcp/service-account.json", "credentials.json"):
            with pytest.raises(JsonRpcException, match="not sent to the model|cannot be attached"):
                await chat.ask(f"What is in @file:{reference} ?", maxTokens=4)
        whole = {"start": {"line": 0, "character": 0}, "end": {"line": 3, "character": 0}}
        refused_attachments = [
            {"kind": "file", "uri": (corpus.root / ".pypirc").as_uri()},
            {"kind": "file", "uri": (corpus.root / "auth/tokens.go").as_uri()},
            {"kind": "selection", "uri": config_uri, "range": whole},
            {"kind": "selection", "uri": (corpus.root / ".env").as_uri(), "range": whole},
        ]
        for attachment in refused_attachments:
            with pytest.raises(JsonRpcException, match="not sent to the model|cannot be attached"):
                await chat.ask("Explain this", attachments=[attachment], maxTokens=4)
        with pytest.raises(JsonRpcException, match="no definition of 'STRIPE_API_KEY'"):
            await chat.ask("Explain @symbol:STRIPE_API_KEY", maxTokens=4)
        assert proxy.model_requests()[before:] == [], "a refused chat reached the server"
        # A question that names what the secret files define: retrieval runs and finds only ordinary code.
        answer = await chat.ask("How does invoice use charge_customer, the Stripe key, release_headers and slugify?", maxTokens=4)
        assert answer["finishReason"] in ("stop", "length")
        sent = proxy.model_requests()[before:]
        assert len(sent) == 1 and "def slugify" in sent[0].text()
        assert_no_leak(proxy, corpus)
    finally:
        await chat.stop()


async def test_code_actions_offer_nothing_on_a_secret(secrets_env, corpus, proxy):
    chat = await started(secrets_env, corpus)
    try:
        selection = types.Range(start=types.Position(0, 0), end=types.Position(3, 0))

        async def actions_on(uri: str):
            return await chat.client.text_document_code_action_async(
                types.CodeActionParams(text_document=types.TextDocumentIdentifier(uri=uri), range=selection, context=types.CodeActionContext(diagnostics=[]))
            )

        assert len(await actions_on(open_file(chat, corpus, "main.py"))) == 3
        for relative in ("billing/config.py", ".env", "notify/slack.js"):
            assert not await actions_on(open_file(chat, corpus, relative)), relative
        # The editor's chat command, forged for a secret's selection: the chat it opens is refused.
        config_uri = (corpus.root / "billing/config.py").as_uri()
        await chat.command("fimble.chatAbout", {"action": "explain", "uri": config_uri, "range": {"start": {"line": 0, "character": 0}, "end": {"line": 3, "character": 0}}})
        for _ in range(100):
            if chat.opened:
                break
            await asyncio.sleep(0.05)
        (opened,) = chat.opened
        before = len(proxy.model_requests())
        with pytest.raises(JsonRpcException, match=re.escape("is not sent to the model")):
            await chat.ask(opened["prompt"], attachments=opened["attachments"], maxTokens=4)
        assert proxy.model_requests()[before:] == []
        assert_no_leak(proxy, corpus)
    finally:
        await chat.stop()
