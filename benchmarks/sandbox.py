"""Run an untrusted Python program (a model's completion plus its tests) in a child process.

The child is `python -I` (isolated: no user site, no PYTHON* variables, cwd not on sys.path) in a
fresh temporary directory, with a minimal environment, its own session (so a timeout kills anything
it spawned too) and resource limits: address space, CPU seconds, file size, no core files. Its output
goes to files in that directory, so the file-size limit also caps a program that prints forever.

This keeps honest mistakes (infinite loops, huge allocations, stray files) from hurting the machine;
it is not a security boundary against a hostile program.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

STDERR_TAIL_CHARS = 600


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    address_space_bytes: int = 2 * 1024**3
    file_size_bytes: int = 16 * 1024**2


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exited 0 within the timeout
    returncode: int | None  # None when it was killed for the timeout
    timed_out: bool
    duration_s: float
    stderr_tail: str  # the end of its stderr: the assertion or exception that failed it


def run_python(program: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="fimble-sandbox-") as workdir:
        directory = Path(workdir)
        (directory / "program.py").write_text(program, encoding="utf-8")
        with open(directory / "stdout", "wb") as stdout, open(directory / "stderr", "wb") as stderr:
            started = time.perf_counter()
            child = subprocess.Popen(
                [sys.executable, "-I", "program.py"],
                cwd=directory,
                env=minimal_env(directory),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_limits_setter(limits),
            )
            returncode, timed_out = wait_or_kill(child, limits.timeout_s)
            duration = time.perf_counter() - started
        stderr_text = (directory / "stderr").read_bytes()[-STDERR_TAIL_CHARS:].decode("utf-8", "replace")
    return SandboxResult(returncode == 0, returncode, timed_out, duration, stderr_text)


def minimal_env(directory: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(directory), "TMPDIR": str(directory), "LANG": "C.UTF-8"}


def wait_or_kill(child: subprocess.Popen, timeout_s: float) -> tuple[int | None, bool]:
    try:
        return child.wait(timeout=timeout_s), False
    except subprocess.TimeoutExpired:
        # The child leads its own session, so its process group holds whatever it spawned.
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
        return None, True


def _limits_setter(limits: SandboxLimits):
    # The limits are computed here, in the parent: the function that runs in the forked child does
    # as little as possible (preexec_fn runs between fork and exec, where little is safe).
    cpu_seconds = int(limits.timeout_s) + 1
    settings = [
        (resource.RLIMIT_AS, limits.address_space_bytes),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_CORE, 0),
    ]

    def set_limits() -> None:
        for kind, value in settings:
            resource.setrlimit(kind, (value, value))

    return set_limits
