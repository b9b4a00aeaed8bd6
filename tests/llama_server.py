"""A real OpenAI-compatible server for the remote-backend tests and benchmarks: llama-cpp-python's
server on 127.0.0.1, serving the embedded model's GGUF.

llama-cpp-python ships as source only. Built the default way (-march=native) on an Intel Xeon with
AMX, it dies with "Illegal instruction" in its first decode (seen on this project's machines), so
it is built here for the CPU's instruction sets with AMX off, and without the llava library the
server does not need (5 min 40 s on 2 vCPUs with it). The build is kept per machine in the test
tools cache (FIMBLE_TEST_TOOLS, set by tests/conftest.py: ~/.cache/fimble-test-tools), keyed by
version and instruction sets, and installed there with `pip --target`; the server's pure-Python
dependencies come with the `test` extra.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LLAMA_CPP_VERSION = "0.3.36"
_SIMD_FLAGS = {  # /proc/cpuinfo flag -> the ggml CMake option it allows
    "avx512f": "GGML_AVX512",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}


def tools_dir() -> Path:
    return Path(os.environ.get("FIMBLE_TEST_TOOLS") or Path.home() / ".cache" / "fimble-test-tools")


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cmake_args(flags: set[str]) -> list[str]:
    """A build for this CPU's instruction sets, never AMX (see the module docstring)."""
    args = ["-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    for flag, option in (("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"), ("fma", "GGML_FMA"), ("f16c", "GGML_F16C"), ("bmi2", "GGML_BMI2")):
        args.append(f"-D{option}={'ON' if flag in flags else 'OFF'}")
    for flag, option in _SIMD_FLAGS.items():
        args.append(f"-D{option}={'ON' if flag in flags else 'OFF'}")
    return args


def llama_cpp_site(progress=print) -> Path:
    """A directory holding llama_cpp built for this machine, built once (about 5 minutes)."""
    flags = cpu_flags()
    variant = "-".join(sorted(flag for flag in ("avx2", *_SIMD_FLAGS) if flag in flags)) or "generic"
    site = tools_dir() / f"llama-cpp-python-{LLAMA_CPP_VERSION}-{variant}"
    if (site / "llama_cpp" / "server").is_dir():
        return site
    staging = site.with_name(site.name + ".building")
    progress(f"building llama-cpp-python {LLAMA_CPP_VERSION} for this CPU ({variant}, no AMX) into {site}: about 5 minutes, once")
    started = time.monotonic()
    shutil.rmtree(staging, ignore_errors=True)
    env = dict(os.environ, CMAKE_ARGS=" ".join(cmake_args(flags)), PIP_DISABLE_PIP_VERSION_CHECK="1")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--target", str(staging), f"llama-cpp-python=={LLAMA_CPP_VERSION}"],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"building llama-cpp-python failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    staging.rename(site)
    progress(f"built llama-cpp-python in {time.monotonic() - started:.0f} s")
    return site


def embedded_gguf(cache_dir: Path) -> Path:
    """The embedded model's GGUF file, joined from its parts once into `cache_dir`."""
    from fimble.models.embedded import concatenate_parts, find_gguf_parts, verify_parts

    path = cache_dir / "embedded.gguf"
    if not path.is_file():
        parts = find_gguf_parts()
        verify_parts(parts)
        partial = path.with_suffix(".partial")
        concatenate_parts(parts, partial)
        partial.rename(path)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LlamaServer:
    """llama-cpp-python's server in a process group of its own; `log` collects its output, where it
    prints its own timings (prompt eval / eval, per request)."""

    gguf: Path
    site: Path
    api_key: str
    port: int = field(default_factory=free_port)
    log: Path | None = None
    threads: int = 2
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120) -> LlamaServer:
        log = open(self.log, "ab") if self.log else subprocess.DEVNULL
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", "qwen2.5-coder-0.5b-instruct",
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "4096",
            "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads), "--api_key", self.api_key,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(self.site), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited at start (code {self.process.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.api_key}"}, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the llama.cpp server did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return "(no log kept)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None
