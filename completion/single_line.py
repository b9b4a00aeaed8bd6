"""`fimble complete`'s path: a single-line FIM completion at a cursor, through the engine.

The LSP issue replaces this with the full completion path (trigger, context, postprocess).
"""

from __future__ import annotations

from dataclasses import dataclass

from completion.prompt import QWEN_CODER_STOP_IDS, Cursor, FimBudget, build_fim_prompt, first_line
from models.engine import Engine, GenerationRequest, GenerationResult
from models.spec import Role


@dataclass(frozen=True)
class SingleLineCompletion:
    text: str
    result: GenerationResult


def complete_single_line(
    engine: Engine, text: str, cursor: Cursor, budget: FimBudget = FimBudget(), max_new_tokens: int = 48
) -> SingleLineCompletion:
    prompt = build_fim_prompt(text, cursor, engine.tokenizer, budget)
    result = engine.generate(
        GenerationRequest(
            prompt_ids=prompt.token_ids,
            role=Role.SINGLE_LINE,
            max_new_tokens=max_new_tokens,
            stop_token_ids=QWEN_CODER_STOP_IDS,
            # Stopping in the engine at the line break saves decoding a line nobody will see.
            stop_strings=("\n",),
        )
    )
    return SingleLineCompletion(first_line(result.text), result)
