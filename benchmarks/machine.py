"""What a benchmark's figures were measured on, recorded beside them."""

from __future__ import annotations

import subprocess

from tests.llama_server import cpu_flags


def cpu_model() -> str:
    """lscpu's model name, and whether the CPU has AMX: "Intel(R) Xeon(R) Processor" names machines
    with and without it here, and AMX multiplies bf16 (prefill) much faster, so their figures must
    not be compared as one machine's."""
    done = subprocess.run(["lscpu"], capture_output=True, text=True)
    name = next((line.split(":", 1)[1].strip() for line in done.stdout.splitlines() if line.startswith("Model name")), "unknown")
    return f"{name} ({'AMX' if 'amx_tile' in cpu_flags() else 'no AMX'})"
