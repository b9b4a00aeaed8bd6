"""A real OpenAI-compatible server for the remote-backend tests and benchmarks: llama-cpp-python's
server on 127.0.0.1, serving the embedded model's GGUF.

llama-cpp-python ships as source only. Built the default way (-march=native) on an Intel Xeon with
AMX, it dies with "Illegal instruction" in its first decode (seen on this project's machines), so
it is built here for the CPU's instruction sets with AMX off, and without the llava library the
server does not need (5 min 40 s on 2 vCPUs with it). The build is kept per machine in the test
tools cache (FIMBLE_TEST_TOOLS, set by tests/conftest.py: ~/.cache/fimble-test-tools), keyed by
version and instruction sets, and installed there with `pip --target`; the server's pure-Python
dependencies come with the `test` extra.

The benchmarks also run llama.cpp's own C++ server (`llama-server`), the one teams deploy. It is
built from the llama.cpp sources inside the same llama-cpp-python sdist, with the same options,
and kept in the same cache.
"""

from __future__ import annotations

import abc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LLAMA_CPP_VERSION = "0.3.36"
MODEL_ALIAS = "qwen2.5-coder-0.5b-instruct"
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


def build_variant(flags: set[str]) -> str:
    """The instruction sets a build is for, in its cache folder's name."""
    return "-".join(sorted(flag for flag in ("avx2", *_SIMD_FLAGS) if flag in flags)) or "generic"


def llama_cpp_site(progress=print) -> Path:
    """A directory holding llama_cpp built for this machine, built once (about 5 minutes)."""
    flags = cpu_flags()
    variant = build_variant(flags)
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


def native_server_binary(progress=print) -> Path:
    """llama.cpp's `llama-server`, built once for this CPU from the llama-cpp-python sdist's copy of
    llama.cpp (about 8 minutes on 2 vCPUs), statically linked, without its web UI."""
    flags = cpu_flags()
    binary = tools_dir() / f"llama-server-{LLAMA_CPP_VERSION}-{build_variant(flags)}" / "llama-server"
    if binary.is_file():
        return binary
    progress(f"building llama.cpp's llama-server {LLAMA_CPP_VERSION} for this CPU into {binary.parent}: about 8 minutes, once")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fimble-llama-server-") as tmp:
        work = Path(tmp)
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(work), f"llama-cpp-python=={LLAMA_CPP_VERSION}"],
            "downloading the llama-cpp-python sdist",
        )  # fmt: skip
        with tarfile.open(next(work.glob("llama_cpp_python-*.tar.gz"))) as sdist:
            sdist.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        options = [
            "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
        ]  # fmt: skip
        _run(["cmake", "-S", str(source), "-B", str(work / "build"), *cmake_args(flags), *options], "configuring llama.cpp")
        _run(["cmake", "--build", str(work / "build"), "--target", "llama-server", "-j", str(os.cpu_count() or 2)], "building llama-server")
        staging = binary.with_name("llama-server.building")
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / "build" / "bin" / "llama-server", staging)
        staging.rename(binary)
    progress(f"built llama-server in {time.monotonic() - started:.0f} s")
    return binary


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


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
class ServerProcess(abc.ABC):
    """An OpenAI-compatible llama.cpp server on 127.0.0.1 in a process group of its own, serving
    `gguf` as MODEL_ALIAS; `log` collects its output, where it prints its own timings (prompt eval,
    eval, total, per request)."""

    gguf: Path
    api_key: str
    port: int = field(default_factory=free_port)
    log: Path | None = None
    threads: int = 2
    process: subprocess.Popen | None = None
    name = "a llama.cpp server"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @abc.abstractmethod
    def command(self) -> list[str]: ...

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout_s: float = 120) -> ServerProcess:
        log = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start (code {self.process.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.api_key}"}, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return "(no log kept)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None



@dataclass
class LlamaServer(ServerProcess):
    """llama-cpp-python's server (FastAPI), run from `site` (llama_cpp_site())."""

    site: Path = field(kw_only=True)
    name = "llama-cpp-python's server"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "4096",
            "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads), "--api_key", self.api_key,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(self.site), os.environ.get("PYTHONPATH")])))


@dataclass
class NativeLlamaServer(ServerProcess):
    """llama.cpp's C++ `llama-server` (native_server_binary()), one slot: one editor's requests, in
    order, with the whole context for each. Without the RAM prompt cache (`--cache-ram 0`), which
    would keep prompts the slot has let go and bring them back: an unrelated prompt then resets
    what the server has cached, as the benchmarks' cold passes need."""

    binary: Path = field(kw_only=True)
    name = "llama.cpp's llama-server"

    def command(self) -> list[str]:
        return [
            str(self.binary), "--model", str(self.gguf), "--alias", MODEL_ALIAS, "--host", "127.0.0.1",
            "--port", str(self.port), "--ctx-size", "4096", "--parallel", "1", "--threads", str(self.threads),
            "--threads-batch", str(self.threads), "--api-key", self.api_key, "--no-ui", "--cache-ram", "0",
        ]  # fmt: skip
