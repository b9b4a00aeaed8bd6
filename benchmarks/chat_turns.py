"""Multi-turn chat TTFT: a six-turn conversation about a real third-party file, attached, with the
prefix cache on and off, in one run.

    python benchmarks/chat_turns.py        # writes benchmarks/results/chat_turns.{json,png}

The path is the product's: `chat.service.ChatService.ask` with the in-process engine (as the daemon
runs it) and the embedded model. Two engine pools are loaded side by side, one with the prefix cache
off; each turn is asked in both, one after the other, so machine noise falls on both alike. TTFT is
what the user waits for: from the question to the first streamed piece of the answer (prompt
building included). Each turn's prompt extends the last one (chat/prompt.py), so with the cache on
only the last answer and the new question are computed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fimble.chat.service import AttachmentRequest, ChatRequest, ChatService, ChatWorkspace  # noqa: E402
from fimble.chat.session import SessionStore  # noqa: E402
from fimble.models.backend import EngineBackend  # noqa: E402
from fimble.models.config import load_role_config  # noqa: E402
from fimble.models.engine import EngineConfig  # noqa: E402
from fimble.models.pool import EnginePool  # noqa: E402
from fimble.models.spec import Role  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
QUESTIONS = (
    "What does this file do? Name its classes in one line each.",
    "How does HTTPDigestAuth build the Authorization header?",
    "Why does handle_401 look at the number of calls it has made?",
    "Write a short example that calls an API with HTTPBasicAuth using requests.",
    "What happens when the server answers 401 twice in a row?",
    "Suggest one improvement to _basic_auth_str and show the code.",
)


def attached_file() -> Path:
    return Path(importlib.util.find_spec("requests").origin).parent / "auth.py"


async def ask_timed(service: ChatService, session_id: str | None, question: str, attachment: Path | None, max_tokens: int) -> dict:
    first: list[float] = []
    attachments = (AttachmentRequest("file", attachment),) if attachment else ()
    started = time.perf_counter()

    def on_chunk(_chunk) -> None:
        if not first:
            first.append(time.perf_counter() - started)

    answer = await service.ask(ChatRequest(question, session_id, attachments, max_tokens), ChatWorkspace(attachment.parent if attachment else None), on_chunk)
    total = time.perf_counter() - started
    return {"session_id": answer.session_id, "ttft_s": first[0] if first else total, "total_s": total, "text": answer.text, "finish": answer.finish_reason}


async def conversation(services: dict[str, ChatService], max_tokens: int) -> dict[str, list[dict]]:
    """The conversation is the cache-on one. Before each turn the cache-off service gets a copy of
    that session, so both are asked with the same history (greedy answers can part ways after a
    bf16 rounding difference between cached and recomputed keys)."""
    on, off = services["on"], services["off"]
    session_id: str | None = None
    turns: dict[str, list[dict]] = {"on": [], "off": []}
    for number, question in enumerate(QUESTIONS):
        attachment = attached_file() if number == 0 else None
        if session_id is not None:
            off.store.save(on.store.load(session_id))
        turns["off"].append(await ask_timed(off, session_id, question, attachment, max_tokens))
        turns["on"].append(await ask_timed(on, session_id, question, attachment, max_tokens))
        session_id = turns["on"][-1]["session_id"]
        print(f"turn {number + 1}: ttft on {turns['on'][-1]['ttft_s']:.2f} s, off {turns['off'][-1]['ttft_s']:.2f} s", flush=True)
    return turns


def warm_up(pool: EnginePool) -> None:
    """Load the model and run one tiny request, so turn 1 measures a prompt, not a model load."""
    from fimble.models.generation import GenerationRequest

    engine = pool.engine_for(Role.CHAT)
    engine.generate(GenerationRequest(Role.CHAT, 2, tuple(engine.tokenizer.encode("Hello", add_special_tokens=False))))


def decode_tok_s(pool: EnginePool, tokens: int = 128) -> float:
    """Decode speed of the chat engine on a short prompt, from the engine's own stats."""
    from fimble.models.generation import GenerationRequest

    engine = pool.engine_for(Role.CHAT)
    ids = engine.tokenizer.encode("Write a Python function that parses an ISO date.", add_special_tokens=False)
    result = engine.generate(GenerationRequest(Role.CHAT, tokens, tuple(ids)))
    return result.stats.decode_tok_s


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = range(1, len(result["ttft_on_s"]) + 1)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(turns, result["ttft_off_s"], "o-", label="prefix cache off")
    ax.plot(turns, result["ttft_on_s"], "o-", label="prefix cache on")
    ax.set_xlabel("turn")
    ax.set_ylabel("time to first token, s")
    ax.set_title(f"Chat about requests/auth.py (turns 3-6: on/off = {result['ratio_turns_3_to_6']:.2f})")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=256, help="answer length cap per turn")
    parser.add_argument("--out", type=Path, default=RESULTS / "chat_turns.json")
    args = parser.parse_args(argv)

    roles = load_role_config()
    pools = {"on": EnginePool(roles), "off": EnginePool(roles, EngineConfig(prefix_cache=False))}
    try:
        for pool in pools.values():
            warm_up(pool)
        with tempfile.TemporaryDirectory() as data:
            services = {label: ChatService(SessionStore(Path(data) / label), EngineBackend(pool)) for label, pool in pools.items()}
            turns = asyncio.run(conversation(services, args.max_tokens))
        decode = decode_tok_s(pools["on"])
        loaded = pools["on"].engine_for(Role.CHAT).loaded
    finally:
        for pool in pools.values():
            pool.close()

    on = [turn["ttft_s"] for turn in turns["on"]]
    off = [turn["ttft_s"] for turn in turns["off"]]
    result = {
        "ttft_on_s": on,
        "ttft_off_s": off,
        "ratio_turns_3_to_6": statistics.median(a / b for a, b in zip(on[2:], off[2:])),
        "decode_tok_s": decode,
        "answers_identical_on_off": [a["text"] == b["text"] for a, b in zip(turns["on"], turns["off"])],
        "answer_chars": [len(turn["text"]) for turn in turns["on"]],
        "max_answer_tokens": args.max_tokens,
        "attached": "requests/auth.py",
        "model": loaded.name,
        "quantization": loaded.quantization,
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} vCPUs)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
