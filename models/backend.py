"""Where generations run, behind one protocol that completion and chat use without knowing which:

    Backend.model(role)       -> ServedModel  (ModelInfo, a tokenizer, the model's family)
    Backend.generate(request) -> GenerationResult, with GenerationChunks streamed to `on_chunk`

- DaemonBackend: the shared daemon over its socket (editors, `fimble chat`);
- EngineBackend: engines in this process (`fimble complete`, benchmarks);
- RemoteBackend (models/remote.py): an OpenAI-compatible server;
- RoutedBackend: each role to the backend its spec's source names.
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass
from typing import Callable, Protocol

from tokenizers import Tokenizer as RustTokenizer

from fimble.models.families import ModelFamily, detect_family, family_named, fim_warning
from fimble.models.generation import GenerationChunk, GenerationRequest, GenerationResult, ModelInfo
from fimble.models.spec import Role, RoleConfig

ChunkCallback = Callable[[GenerationChunk], None]


class Tokenizer(Protocol):
    """What prompt building needs: ids, and each token's character offsets (for budgets)."""

    def __call__(self, text: str, add_special_tokens: bool = ..., return_offsets_mapping: bool = ...) -> dict: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def get_vocab(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class ServedModel:
    info: ModelInfo
    tokenizer: Tokenizer
    family: ModelFamily

    # Looked up once: building Qwen's 151,936-entry vocabulary takes 140 ms, and a keystroke's
    # whole prompt 25.
    @functools.cached_property
    def stop_token_ids(self) -> tuple[int, ...]:
        return self.family.stop_token_ids(self.tokenizer.get_vocab())

    @functools.cached_property
    def chat_stop_token_ids(self) -> tuple[int, ...]:
        vocabulary = self.tokenizer.get_vocab()
        return tuple(sorted({vocabulary[token] for token in self.family.chat_stop if token in vocabulary}))


class Backend(Protocol):
    async def model(self, role: Role) -> ServedModel: ...

    async def generate(self, request: GenerationRequest, on_chunk: ChunkCallback | None = None) -> GenerationResult: ...


# --- tokenizers -----------------------------------------------------------------------------------


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

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)


# A word, a run of spaces, or any other character: about one BPE token each in code.
_PIECE = re.compile(r"[A-Za-z0-9_]+| +|\s|.", re.DOTALL)


class ApproximateTokenizer:
    """Token budgets for a remote model whose tokenizer is not here: one piece per word, run of
    spaces or other character. Code BPEs merge more (a 1,500-token Qwen prompt of requests'
    sessions.py is 1,900 pieces), so budgets come out on the safe side. Its ids are only counts:
    remote servers get the prompt as text."""

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict:
        spans = [match.span() for match in _PIECE.finditer(text)]
        return {"input_ids": [0] * len(spans), "offset_mapping": spans}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [0] * sum(1 for _ in _PIECE.finditer(text))

    def get_vocab(self) -> dict[str, int]:
        return {}


# --- the daemon -----------------------------------------------------------------------------------


def served_model(info: ModelInfo, tokenizer: Tokenizer | None = None) -> ServedModel:
    tokenizer = tokenizer or (served_tokenizer(info.tokenizer_json) if info.tokenizer_json else ApproximateTokenizer())
    return ServedModel(info, tokenizer, family_named(info.family))


@functools.lru_cache(maxsize=2)
def served_tokenizer(tokenizer_json: str) -> ServedTokenizer:
    """One tokenizer per tokenizer.json: roles on one model, and the same model after a daemon
    restart, share it. Building the embedded model's takes ~0.5 s."""
    return ServedTokenizer(tokenizer_json)


class DaemonBackend:
    def __init__(self, client):
        self.client = client  # models.daemon_client.DaemonClient
        self._models: dict[Role, asyncio.Future[ServedModel]] = {}

    def forget_models(self) -> None:
        """After a daemon restart the config, and so the models, may have changed."""
        self._models.clear()

    async def model(self, role: Role) -> ServedModel:
        """The role's model, asked of the daemon once: every keystroke's request waits on the same
        query, and a superseded request leaves it running for the next. (One query per request
        made the daemon build a 7 MB tokenizer.json dozens of times after each restart.) A query
        that failed is asked again."""
        query = self._models.get(role)
        if query is None or (query.done() and (query.cancelled() or query.exception() is not None)):
            query = self._models[role] = asyncio.ensure_future(self._ask_model(role))
            query.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen, if nobody waits now
        return await asyncio.shield(query)

    async def _ask_model(self, role: Role) -> ServedModel:
        from fimble.models import wire

        info = await self.client.call(wire.ModelQuery(role), ModelInfo)
        # In a thread: the tokenizer's build lets go of the GIL, so keystrokes are handled meanwhile
        # (on the event loop it held the editor's requests for ~0.5 s).
        return await asyncio.to_thread(served_model, info)

    async def generate(self, request: GenerationRequest, on_chunk: ChunkCallback | None = None) -> GenerationResult:
        return await self.client.generate(request, on_chunk)


# --- engines in this process ----------------------------------------------------------------------


def model_info(loaded, role: Role) -> ModelInfo:
    """What a client needs to build prompts for `role` on a loaded model (models.loading.LoadedModel)."""
    tokenizer = loaded.tokenizer
    if loaded.spec.family:
        family = family_named(loaded.spec.family)
    else:
        model_type = getattr(loaded.model.config, "model_type", "")
        family = detect_family(f"{loaded.name} {loaded.spec.source}", tokenizer.get_vocab(), model_type)
    warning = fim_warning(family, loaded.name) if role != Role.CHAT else ""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    return ModelInfo(
        name=loaded.name,
        family=family.name,
        context_length=loaded.spec.context_length,
        chat_template=template if isinstance(template, str) else "",
        tokenizer_json=tokenizer.backend_tokenizer.to_str(),
        warnings=(warning,) if warning else (),
    )


class EngineBackend:
    """Engines from an EnginePool in this process. Waiting on a request happens in a worker
    thread that runs no torch ops (see models/daemon.py on OpenMP pools)."""

    def __init__(self, pool):
        self.pool = pool  # models.pool.EnginePool
        self._models: dict[Role, ServedModel] = {}

    async def model(self, role: Role) -> ServedModel:
        if role not in self._models:
            engine = await asyncio.to_thread(self.pool.engine_for, role)
            self._models[role] = served_model(model_info(engine.loaded, role), engine.tokenizer)
        return self._models[role]

    async def generate(self, request: GenerationRequest, on_chunk: ChunkCallback | None = None) -> GenerationResult:
        """`on_chunk` sees each streamed piece, on the event loop."""
        loop = asyncio.get_running_loop()
        engine = await asyncio.to_thread(self.pool.engine_for, request.role)
        handle = engine.submit(request)

        def wait() -> None:
            for delta in handle.stream():
                if on_chunk is not None:
                    # Scheduled before to_thread's own completion, so every chunk is seen first.
                    loop.call_soon_threadsafe(on_chunk, GenerationChunk(delta))

        try:
            await asyncio.to_thread(wait)
        finally:
            if not handle.done:  # the caller was cancelled while the engine was still generating
                handle.cancel()
        return handle.result()


# --- routing --------------------------------------------------------------------------------------


class RoutedBackend:
    """Each role to the backend its spec's source names: an http(s) URL to a remote server (one
    client per distinct spec), anything else to `local` (the daemon, or engines in this process)."""

    def __init__(self, roles: RoleConfig, local: Backend, remote_factory: Callable | None = None):
        from fimble.models.remote import RemoteBackend

        factory = remote_factory or RemoteBackend
        self.local = local
        self._remote = {spec: factory(spec) for role in Role if (spec := roles.spec_for(role)).is_remote}
        self._roles = roles

    def backend_for(self, role: Role) -> Backend:
        return self._remote.get(self._roles.spec_for(role), self.local)

    def forget_models(self) -> None:
        if hasattr(self.local, "forget_models"):
            self.local.forget_models()

    async def model(self, role: Role) -> ServedModel:
        return await self.backend_for(role).model(role)

    async def generate(self, request: GenerationRequest, on_chunk: ChunkCallback | None = None) -> GenerationResult:
        return await self.backend_for(request.role).generate(request, on_chunk)

    async def close(self) -> None:
        for remote in self._remote.values():
            await remote.close()
