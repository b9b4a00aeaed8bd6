"""What the server tells the editor about itself (`fimble/status`, docs/chat-protocol.md): the state
of the completion model behind the daemon and of the workspace index, sent whenever either
changes, so that an editor can show it (VS Code's status bar item does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

STATUS = "fimble/status"

ModelState = Literal["starting", "loading", "ready", "error"]
IndexState = Literal["none", "indexing", "ready", "failed"]  # none: no workspace folder to index


@dataclass(frozen=True)
class ServerStatus:
    model: ModelState = "starting"
    index: IndexState = "none"
    problem: str = ""  # what went wrong, while the model is in "error"; the editor was told too

    @property
    def state(self) -> str:
        """The one word an editor shows: a problem first, then what is still being prepared."""
        if self.model == "error":
            return "error"
        if self.model != "ready":
            return "loading"
        return "indexing" if self.index == "indexing" else "ready"

    def to_wire(self) -> dict:
        return {"state": self.state, "model": self.model, "index": self.index, "problem": self.problem}
