"""benchmarks/results/reliability.json, which several reliability scripts fill in part by part
(fuzzing, load, faults, soak, secrets). Each script records only its own keys, so one can be rerun
without losing the others' figures, and each part keeps the command and machine that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PATH = RESULTS / "reliability.json"


def cpu_model() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in lscpu.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def record(part: str, figures: dict[str, Any], command: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge one part's top-level figures into reliability.json, with its provenance under
    "parts"; the file is replaced atomically, so an interrupted run leaves the previous one."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    current = json.loads(PATH.read_text()) if PATH.exists() else {}
    current.update(figures)
    parts = current.setdefault("parts", {})
    parts[part] = {
        "command": command,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "figures": sorted(figures),
        **({"details": details} if details else {}),
    }
    ordered = {key: current[key] for key in sorted(current) if key != "parts"} | {"parts": dict(sorted(parts.items()))}
    temporary = PATH.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(ordered, indent=2) + "\n")
    os.replace(temporary, PATH)
    return ordered
