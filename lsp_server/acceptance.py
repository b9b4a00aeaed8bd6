"""Acceptance statistics, local only: suggestions shown, accepted and partly accepted, per language
and mode, and the latency from keystroke to suggestion. Kept in the user's data dir
(`acceptance.json`); `fimble stats` prints them. Nothing leaves the machine.

Every editor window's server adds its counts to the one file: a save takes the file's lock, reads
it, adds what this process counted since its last save, and replaces it atomically, so windows
never overwrite each other's counts and a crash mid-write loses nothing already saved.
"""

from __future__ import annotations

import fcntl
import json
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from fimble.context.store import write_atomically
from fimble.dirs import data_dir

log = logging.getLogger(__name__)

FILE_NAME = "acceptance.json"
# Latency samples kept per language and mode: the newest, enough for stable percentiles.
KEPT_LATENCIES = 2000
COUNTS = ("shown", "accepted", "partly_accepted")


@dataclass
class Tally:
    shown: int = 0
    accepted: int = 0
    partly_accepted: int = 0
    latency_ms: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency_ms = (self.latency_ms + other.latency_ms)[-KEPT_LATENCIES:]

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in COUNTS} | {"latency_ms": [round(x, 1) for x in self.latency_ms]}

    @classmethod
    def from_json(cls, raw: dict) -> Tally:
        return cls(*(int(raw.get(name, 0)) for name in COUNTS), [float(x) for x in raw.get("latency_ms", [])])


Key = tuple[str, str]  # (language, mode)


class AcceptanceStats:
    def __init__(self, path: Path | None = None):
        self.path = path or data_dir() / FILE_NAME
        self._unsaved: dict[Key, Tally] = defaultdict(Tally)

    def shown(self, language: str, mode: str, latency_ms: float) -> None:
        tally = self._unsaved[(language or "plaintext", mode)]
        tally.shown += 1
        tally.latency_ms.append(latency_ms)

    def accepted(self, language: str, mode: str, partly: bool = False) -> None:
        tally = self._unsaved[(language or "plaintext", mode)]
        if partly:
            tally.partly_accepted += 1
        else:
            tally.accepted += 1

    def save(self) -> None:
        """Add what was counted since the last save to the file. A failure (a read-only data dir,
        a full disk) keeps the counts for the next save and leaves the file as it was."""
        if not self._unsaved:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                totals = read_tallies(self.path)
                for key, tally in self._unsaved.items():
                    totals.setdefault(key, Tally()).add(tally)
                _write(self.path, totals)
        except OSError as error:
            log.warning("acceptance statistics not saved to %s: %s", self.path, error)
            return
        self._unsaved.clear()


def read_tallies(path: Path) -> dict[Key, Tally]:
    """The saved statistics; a missing file is none yet, and a damaged one starts over (it is
    replaced on the next save) with a warning."""
    try:
        raw = json.loads(path.read_text())
        return {(entry["language"], entry["mode"]): Tally.from_json(entry) for entry in raw["tallies"]}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("acceptance statistics in %s are damaged (%s); starting over", path, error)
        return {}


def _write(path: Path, totals: dict[Key, Tally]) -> None:
    tallies = [{"language": language, "mode": mode} | tally.to_json() for (language, mode), tally in sorted(totals.items())]
    write_atomically(path, json.dumps({"version": 1, "tallies": tallies}).encode())


def format_table(tallies: dict[Key, Tally]) -> str:
    """`fimble stats`: one row per language and mode."""
    if not tallies:
        return "No suggestions shown yet."
    header = f"{'language':<14}{'mode':<13}{'shown':>7}{'accepted':>10}{'partly':>8}{'rate':>7}{'p50 ms':>8}{'p90 ms':>8}"
    rows = [header]
    for (language, mode), tally in sorted(tallies.items()):
        rate = f"{(tally.accepted + tally.partly_accepted) / tally.shown:.0%}" if tally.shown else "-"
        rows.append(
            f"{language:<14}{mode:<13}{tally.shown:>7}{tally.accepted:>10}{tally.partly_accepted:>8}{rate:>7}"
            f"{_percentile(tally.latency_ms, 50):>8}{_percentile(tally.latency_ms, 90):>8}"
        )
    return "\n".join(rows)


def _percentile(values: list[float], q: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.quantiles(values, n=100, method='inclusive')[q - 1]:.0f}"
