"""The initialize handshake and settings: capabilities, bad values falling back with a warning."""

from __future__ import annotations

from lsprotocol import types

from fimble.lsp_server.settings import Settings, parse_settings
from tests.lsp_server.conftest import start_client


async def test_initialize_announces_inline_and_fallback_completion(fimble_env):
    client = await start_client(fimble_env)
    try:
        result = client.initialize_result
        assert result.server_info.name == "fimble"
        capabilities = result.capabilities
        assert capabilities.inline_completion_provider
        assert capabilities.completion_provider is not None
        assert capabilities.text_document_sync.change == types.TextDocumentSyncKind.Incremental
        assert capabilities.position_encoding in (None, types.PositionEncodingKind.Utf16)
        assert "fimble.accepted" in capabilities.execute_command_provider.commands
    finally:
        await client.shutdown_session()
        await client.stop()


async def test_bad_settings_fall_back_with_a_warning(fimble_env):
    options = {"maxDebounceMs": "fast", "abstainBelowLogprob": None, "multiLine": 3, "colour": "red"}
    client = await start_client(fimble_env, initialization_options=options)
    try:
        warnings = [m.message for m in client.messages if m.type == types.MessageType.Warning]
        assert any("'maxDebounceMs' = 'fast' is invalid" in w and "using 120" in w for w in warnings), warnings
        assert any("'multiLine' = 3 is invalid" in w for w in warnings), warnings
        assert any("unknown setting 'colour'" in w for w in warnings), warnings
        # The server still works with the defaults in place of the bad values.
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri="file:///s.py", language_id="python", version=1, text="x = 1\ny = \n"))
        )
        answer = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri="file:///s.py"),
                position=types.Position(1, 4),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            )
        )
        assert answer is not None
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"fimble": {"maxSingleLineTokens": -4}}))
        await client.wait_for_notification(types.WINDOW_SHOW_MESSAGE)
        assert any("'maxSingleLineTokens' = -4 is invalid" in m.message for m in client.messages)
    finally:
        await client.shutdown_session()
        await client.stop()


def test_parse_settings_is_strict_about_types():
    settings, warnings = parse_settings({"fimble": {"enable": "yes", "maxDebounceMs": 1.5, "abstainBelowLogprob": -2, "prefixTokens": 0}})
    assert settings == Settings(abstain_below_logprob=-2.0)
    assert len(warnings) == 3
    assert parse_settings([1, 2])[0] == Settings() and parse_settings([1, 2])[1]
    assert parse_settings(None) == (Settings(), [])
