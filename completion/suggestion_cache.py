"""Suggestions that survive typing: recent completions, keyed by the text around the cursor they were
made for.

When the user types the first characters of the ghost text (or accepts a word of it), the text
before the cursor is the old one plus what was typed, and the text after it is unchanged: the rest
of that suggestion is still the answer, so it comes back from here with no model call. Deleting back
into it works the same way, and returning to a spot finds its answer (an LRU of `capacity` answers).
An edit anywhere else changes the key, so it misses.

Entries keep hashes of the text, not the text: 1,000 answers in a 200 KB file would otherwise hold
400 MB of copies. A lookup hashes the new prefix once per candidate with the same suffix; on a
20,000-character file that is ~20 µs each.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

from fimble.completion.service import Completion, CompletionRequest

DEFAULT_CAPACITY = 1000


@dataclass(frozen=True)
class Entry:
    prefix_length: int
    prefix_hash: int
    suffix_key: tuple[int, int]  # (length, hash) of the text after the cursor
    completion: Completion
    explicit: bool  # asked for by the user: never withheld, and multi-line on a blank line


def suffix_key(request: CompletionRequest) -> tuple[int, int]:
    suffix = request.suffix
    return len(suffix), hash(suffix)


def rest_after(completion: Completion, typed: str) -> Completion | None:
    """What of a suggestion is left to show once `typed` has been typed into it: all of it when
    nothing was, the rest when `typed` is a proper start of it; None when the user typed something
    else, or all of it. (An empty answer holds only for the same spot.)"""
    if not typed:
        return completion
    if completion.text.startswith(typed) and len(typed) < len(completion.text):
        others = tuple(other[len(typed) :] for other in completion.alternatives if other.startswith(typed) and len(typed) < len(other))
        return dataclasses.replace(completion, text=completion.text[len(typed) :], from_cache=True, alternatives=others)
    return None


class SuggestionCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, int, tuple[int, int]], Entry] = OrderedDict()  # oldest first
        self._by_suffix: dict[tuple[int, int], list[Entry]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, request: CompletionRequest, completion: Completion) -> None:
        """Keep an answer the model gave (with text, or a decided "nothing to show")."""
        if completion.empty_because in ("model", "trigger", "secret"):
            return  # failures are not answers, and the trigger and secret rules cost nothing to run again
        prefix = request.prefix
        entry = Entry(len(prefix), hash(prefix), suffix_key(request), dataclasses.replace(completion, from_cache=False), request.explicit)
        key = (entry.prefix_length, entry.prefix_hash, entry.suffix_key)
        if key in self._entries:
            self._drop(key)
        self._entries[key] = entry
        self._by_suffix.setdefault(entry.suffix_key, []).append(entry)
        while len(self._entries) > self.capacity:
            self._drop(next(iter(self._entries)))

    def recall(self, request: CompletionRequest) -> Completion | None:
        """The answer for this cursor text: an exact one, or the rest of a suggestion the text
        before the cursor has typed into. None when there is none."""
        prefix = request.prefix
        candidates = self._by_suffix.get(suffix_key(request), ())
        for entry in reversed(candidates):  # the newest answer first
            if entry.prefix_length > len(prefix):
                continue
            rest = rest_after(entry.completion, prefix[entry.prefix_length :])
            if rest is None:
                continue
            if request.explicit and not entry.explicit:
                continue  # an automatic answer may be narrower, or withheld where the model was unsure
            if hash(prefix[: entry.prefix_length]) != entry.prefix_hash:
                continue
            self._entries.move_to_end((entry.prefix_length, entry.prefix_hash, entry.suffix_key))
            return dataclasses.replace(rest, from_cache=True)
        return None

    def clear(self) -> None:
        self._entries.clear()
        self._by_suffix.clear()

    def _drop(self, key) -> None:
        entry = self._entries.pop(key)
        same_suffix = self._by_suffix[entry.suffix_key]
        same_suffix.remove(entry)
        if not same_suffix:
            del self._by_suffix[entry.suffix_key]
