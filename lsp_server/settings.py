"""The server's settings: a typed dataclass read from `initializationOptions` and
`workspace/didChangeConfiguration`. Editors send camelCase keys (`fimble.maxDebounceMs` in VS Code),
at the top level or under a "fimble" section. A bad value keeps its default and yields a warning
for the user; unknown keys are warned about too, since they are usually typos."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any

from fimble.models.conversion import ConversionError, structure
from fimble.models.generation import MAX_CANDIDATES

# HumanEval single-line infilling through the LSP (benchmarks/humaneval_infill.py): see the README's
# abstain table for what each threshold keeps and how precise it is.
DEFAULT_ABSTAIN_BELOW_LOGPROB = -1.0
# See the README's typing-session section for the latencies this default was chosen from.
DEFAULT_MAX_LATENCY_MS = 2500


@dataclass(frozen=True)
class Settings:
    enable: bool = True
    # Multi-line suggestions after block openers and in empty bodies.
    multi_line: bool = True
    # Show nothing when the completion's mean token logprob is below this; None shows everything.
    abstain_below_logprob: float | None = DEFAULT_ABSTAIN_BELOW_LOGPROB
    # The debounce adapts to the typing speed, up to this many milliseconds; 0 turns it off.
    max_debounce_ms: int = 120
    max_single_line_tokens: int = 48
    max_multi_line_tokens: int = 160
    prefix_tokens: int = 1536
    suffix_tokens: int = 128
    # Repository context (definitions from other files) in front of the prompt; 0 turns it off.
    context_tokens: int = 1024
    # Typing into a suggestion shows its rest with no model call, returning to a spot shows its
    # answer again, and a keystroke that agrees with the answer being written waits for it.
    cache_suggestions: bool = True
    # After a suggestion is accepted, the next one is asked for at once, in the background.
    prefetch: bool = True
    # A single-line suggestion not finished this long after the keystroke shows what the model has
    # written so far, cut after its last whole word (the rest comes from the cache when the user
    # types on); 0 waits for the whole line.
    max_latency_ms: int = DEFAULT_MAX_LATENCY_MS
    # Suggestions offered per request (VS Code cycles them with Alt+] and Alt+[): the greedy one,
    # and the greedy continuations of the next-best first tokens. Local models only; see the
    # README's candidates section for what each costs.
    candidates: int = 1

    def __post_init__(self) -> None:
        for name in ("max_debounce_ms", "context_tokens", "max_latency_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("max_single_line_tokens", "max_multi_line_tokens", "prefix_tokens", "suffix_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise ValueError(f"candidates must be from 1 to {MAX_CANDIDATES}")

    def completion(self):
        from fimble.completion.prompt import FimBudget
        from fimble.completion.service import CompletionSettings

        return CompletionSettings(
            multi_line=self.multi_line,
            abstain_below_logprob=self.abstain_below_logprob,
            max_single_line_tokens=self.max_single_line_tokens,
            max_multi_line_tokens=self.max_multi_line_tokens,
            budget=FimBudget(prefix_tokens=self.prefix_tokens, suffix_tokens=self.suffix_tokens),
            context_tokens=self.context_tokens,
            candidates=self.candidates,
        )


def parse_settings(raw: Any, base: Settings = Settings()) -> tuple[Settings, list[str]]:
    """Settings from an editor's JSON, and one warning per value that was ignored."""
    if raw is None:
        return base, []
    if not isinstance(raw, dict):
        return base, [f"Fimble settings must be an object, got {type(raw).__name__}; using defaults"]
    if isinstance(raw.get("fimble"), dict):
        raw = raw["fimble"]
    hints = typing.get_type_hints(Settings)
    fields = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        name = _snake_case(key)
        if name not in fields:
            warnings.append(f"Fimble: unknown setting {key!r} ignored")
            continue
        try:
            values[name] = _coerce(value, hints[name])
            dataclasses.replace(base, **{name: values[name]})  # range checks in __post_init__
        except (ConversionError, ValueError) as error:
            values.pop(name, None)
            reason = "; ".join(error.problems) if isinstance(error, ConversionError) else str(error)
            warnings.append(f"Fimble: setting {key!r} = {value!r} is invalid ({reason}); using {getattr(base, name)!r}")
    return dataclasses.replace(base, **values), warnings


def _snake_case(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _coerce(value: Any, hint: Any) -> Any:
    """JSON value -> the field's type, strictly: "yes" is not a bool, 1.5 is not an int (an int is
    a float); null only where the field allows None."""
    return structure(value, hint, "setting")
