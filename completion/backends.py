"""Where completions are generated: the shared daemon (editors) or an engine in this process
(`fimble complete`). Both satisfy completion.service.Backend."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Callable
from tokenizers import Tokenizer as RustTokenizer

from fimble.completion.prompt import QWEN_CODER_STOP_IDS
from fimble.completion.service import GenerationCall, Generated
from fimble.models.spec import Role


class ServedTokenizer:
    """The model's tokenizer, rebuilt from the tokenizer.json the daemon sends. The editor process
    counts tokens for its prompt budgets without loading transformers or torch."""

    def __init__(self, tokenizer_json: str):
        self._tokenizer = RustTokenizer.from_str(tokenizer_json)

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict:
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": encoding.ids, "offset_mapping": encoding.offsets}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids


class DaemonBackend:
    def __init__(self, client):
        self.client = client  # models.daemon_client.DaemonClient
        self._tokenizers: dict[Role, ServedTokenizer] = {}
        self.models: dict[Role, dict] = {}

    def forget_models(self) -> None:
        """After a daemon restart the config, and so the tokenizers, may have changed."""
        self._tokenizers.clear()
        self.models.clear()

    async def tokenizer(self, role: Role) -> ServedTokenizer:
        if role not in self._tokenizers:
            reply = await self.client.call("model", role=role.config_name)
            self._tokenizers[role] = ServedTokenizer(reply.pop("tokenizer_json"))
            self.models[role] = reply
        return self._tokenizers[role]

    async def chat_template(self, role: Role) -> str:
        """The model's chat template (jinja text; "" when the model has none)."""
        await self.tokenizer(role)
        return self.models[role].get("chat_template") or ""

    async def context_length(self, role: Role) -> int:
        await self.tokenizer(role)
        return int(self.models[role]["context_length"])

    async def generate(self, call: GenerationCall, on_text: Callable[[str], None] | None = None) -> Generated:
        """`on_text` sees each streamed delta (chat); completions pass none."""
        result = await self.client.generate(
            on_text=on_text,
            should_stop=call.should_stop,
            role=call.role.config_name,
            prompt_ids=call.prompt_ids,
            max_new_tokens=call.max_new_tokens,
            stop_token_ids=list(QWEN_CODER_STOP_IDS),
            stop_strings=list(call.stop_strings),
            stop_after_text=call.stop_after_text,
        )
        return Generated(result["text"], result.get("mean_logprob"), result["finish_reason"], result.get("stats", {}))


class EngineBackend:
    """Engines from an EnginePool in this process. Waiting on a request happens in a worker
    thread that runs no torch ops (see models/daemon.py on OpenMP pools)."""

    def __init__(self, pool):
        self.pool = pool  # models.pool.EnginePool

    async def tokenizer(self, role: Role):
        return (await asyncio.to_thread(self.pool.engine_for, role)).tokenizer

    async def chat_template(self, role: Role) -> str:
        template = getattr((await self.tokenizer(role)), "chat_template", None)
        return template if isinstance(template, str) else ""

    async def context_length(self, role: Role) -> int:
        return (await asyncio.to_thread(self.pool.engine_for, role)).loaded.spec.context_length

    async def generate(self, call: GenerationCall, on_text: Callable[[str], None] | None = None) -> Generated:
        """`on_text` sees each streamed delta, on the event loop (chat); completions pass none."""
        from fimble.models.engine import GenerationRequest

        loop = asyncio.get_running_loop()

        engine = await asyncio.to_thread(self.pool.engine_for, call.role)
        handle = engine.submit(
            GenerationRequest(
                call.prompt_ids, call.role, call.max_new_tokens, QWEN_CODER_STOP_IDS, call.stop_strings, call.stop_after_text
            )
        )

        def wait() -> None:
            text = ""
            for delta in handle.stream():
                text += delta
                if on_text is not None:
                    # Scheduled before to_thread's own completion, so every delta is seen first.
                    loop.call_soon_threadsafe(on_text, delta)
                if call.should_stop is not None and call.should_stop(text):
                    handle.cancel()

        try:
            await asyncio.to_thread(wait)
        finally:
            if not handle.done:  # the caller was cancelled while the engine was still generating
                handle.cancel()
        result = handle.result()
        return Generated(result.text, result.mean_logprob, result.finish_reason, asdict(result.stats))
