"""Installs a real VS Code for the end-to-end tests, once per machine: code-server (VS Code 1.96.4,
whose extension host runs on the server side, so an extension can start `fimble lsp`) from npm,
and playwright-core, which drives Debian's Chromium. Nothing is downloaded from outside the npm
registry and Debian; the steps of code-server's postinstall that would be are done by hand.

    python tests/e2e/vscode/install.py

It prints each step and how long it took; a second run finds everything in place and does nothing.
Everything goes into the test tools cache, $FIMBLE_TEST_TOOLS (default ~/.cache/fimble-test-tools,
shared with tests/llama_server.py), one folder per version. A
folder is built beside its place and renamed into it when complete, so an interrupted run starts
that step again. Debian packages that are missing are installed with apt-get (as root), or named
in the error. Only the standard library is used: this runs before anything else is installed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CODE_SERVER_VERSION = "4.96.4"  # VS Code 1.96.4; 4.104 and later need Node 22
PLAYWRIGHT_CORE_VERSION = "1.65.1"
NODE_MAJOR = 20  # code-server 4.96's native modules are built here against this Node's headers
NODE_HEADERS = Path("/usr/include/node")
CHROMIUM = Path("/usr/bin/chromium")
RIPGREP = Path("/usr/bin/rg")
# Chromium for the browser; rg stands in for @vscode/ripgrep's download; the native modules
# (kerberos needs krb5's headers) are compiled here instead of fetched prebuilt.
DEBIAN_PACKAGES = ("chromium", "ripgrep", "libkrb5-dev", "build-essential")
REGISTRY = "https://registry.npmjs.org"
# The native modules of lib/vscode whose install scripts were skipped (npm --ignore-scripts).
VSCODE_NATIVE_MODULES = ("@vscode/spdlog", "node-pty", "native-watchdog", "@parcel/watcher", "@vscode/deviceid", "kerberos")

Say = Callable[[str], None]


class SetupError(RuntimeError):
    """A step that cannot be done on this machine; the message says what to install or fix."""


@dataclass(frozen=True)
class Installed:
    code_server: Path  # the code-server command
    playwright_core: Path  # the module folder, for require()
    chromium: Path


def e2e_cache_dir() -> Path:
    """Where the installs live: the test tools cache. tests/conftest.py sets FIMBLE_TEST_TOOLS from
    the cache dir the user had, before the test run points XDG_CACHE_HOME into a temporary folder;
    this cache must outlive the run."""
    configured = os.environ.get("FIMBLE_TEST_TOOLS")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fimble-test-tools"


def install(cache: Path | None = None, say: Say = print) -> Installed:
    """Everything the VS Code tests need, installing what is missing. Safe to run from two
    processes at once: the second waits for the first and then finds everything in place."""
    cache = cache or e2e_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(cache / "install.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        check_node()
        ensure_debian_packages(say)
        code_server = cached(cache / f"code-server-{CODE_SERVER_VERSION}", install_code_server, say)
        playwright = cached(cache / f"playwright-core-{PLAYWRIGHT_CORE_VERSION}", install_playwright_core, say)
    say(f"VS Code for the tests ready in {time.monotonic() - started:.1f} s ({cache})")
    return Installed(
        code_server=code_server / "node_modules" / "code-server" / "out" / "node" / "entry.js",
        playwright_core=playwright / "node_modules" / "playwright-core",
        chromium=CHROMIUM,
    )


# --- what the machine must have ---------------------------------------------------------------


def check_node() -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise SetupError(f"the VS Code tests need Node.js {NODE_MAJOR} and npm (Debian/Ubuntu: the nodejs package from NodeSource)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if version.lstrip("v").split(".")[0] != str(NODE_MAJOR):
        raise SetupError(f"code-server {CODE_SERVER_VERSION} needs Node.js {NODE_MAJOR}, found {version} at {node}")
    if not (NODE_HEADERS / "node_version.h").is_file():
        raise SetupError(f"Node's C headers are missing ({NODE_HEADERS}); install the nodejs package that ships them")


def missing_debian_packages() -> list[str]:
    def installed(package: str) -> bool:
        query = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", package], capture_output=True, text=True)
        return query.returncode == 0 and query.stdout.strip() == "installed"

    return [package for package in DEBIAN_PACKAGES if not installed(package)]


def ensure_debian_packages(say: Say) -> None:
    if not shutil.which("dpkg-query"):
        raise SetupError(f"the VS Code tests are set up for Debian or Ubuntu; install the equivalents of {', '.join(DEBIAN_PACKAGES)}")
    missing = missing_debian_packages()
    if not missing:
        say(f"Debian packages: in place ({', '.join(DEBIAN_PACKAGES)})")
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SetupError(f"the VS Code tests need the Debian packages {' '.join(missing)}: sudo apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    timed(say, "apt-get update", ["apt-get", "update", "-q"], env=env)
    # No recommends: chromium's only one is chromium-sandbox, which headless as root does not use.
    timed(say, f"apt-get install {' '.join(missing)}", ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)


# --- the cached folders -----------------------------------------------------------------------


def cached(folder: Path, build: Callable[[Path, Say], None], say: Say) -> Path:
    """`folder`, built by `build` into a sibling folder first unless a complete one is there."""
    if (folder / ".complete").is_file():
        say(f"{folder.name}: in place")
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    started = time.monotonic()
    say(f"{folder.name}: installing into {folder}")
    build(partial, say)
    (partial / ".complete").write_text(f"built in {time.monotonic() - started:.0f} s\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    say(f"{folder.name}: installed in {time.monotonic() - started:.1f} s")
    return folder


def install_playwright_core(prefix: Path, say: Say) -> None:
    own_npm_project(prefix)
    # playwright-core downloads no browser (that is the playwright package); it drives /usr/bin/chromium.
    npm(say, prefix, "install", "--no-save", f"playwright-core@{PLAYWRIGHT_CORE_VERSION}")


def install_code_server(prefix: Path, say: Say) -> None:
    own_npm_project(prefix)
    npm(say, prefix, "install", "--no-save", "--ignore-scripts", f"code-server@{CODE_SERVER_VERSION}")
    package = prefix / "node_modules" / "code-server"
    vscode = package / "lib" / "vscode"
    # argon2 (password hashing; unused with --auth none, but loaded) would fetch a prebuilt binary:
    # node-gyp builds it against the installed Node's headers instead.
    npm(say, prefix, "rebuild", "argon2", "--build-from-source")
    redirected = registry_only_shrinkwrap(vscode / "npm-shrinkwrap.json")
    say(f"  lib/vscode/npm-shrinkwrap.json: {', '.join(redirected) or 'nothing'} taken from the npm registry instead")
    npm(say, vscode, "install", "--omit=dev", "--ignore-scripts")
    link_system_ripgrep(vscode)
    npm(say, vscode, "rebuild", *VSCODE_NATIVE_MODULES)
    finish_postinstall(package, vscode)
    npm(say, vscode / "extensions", "install", "--omit=dev")
    say(f"  code-server --version: {code_server_version(package / 'out' / 'node' / 'entry.js')}")


def code_server_version(entry: Path) -> str:
    """`code-server --version`, run with a home of its own: code-server writes a default config
    file into the user's config dir whenever it starts without one."""
    with tempfile.TemporaryDirectory(prefix="code-server-home-") as home:
        env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=f"{home}/config", XDG_DATA_HOME=f"{home}/data")
        done = subprocess.run(["node", str(entry), "--version"], capture_output=True, text=True, env=env)
    version = next((line for line in done.stdout.splitlines() if line.startswith(CODE_SERVER_VERSION)), None)
    if done.returncode != 0 or version is None:
        raise SetupError(f"the installed code-server does not start:\n{done.stdout}\n{done.stderr}")
    return version


def own_npm_project(prefix: Path) -> None:
    """npm installs into the nearest folder above that has a package.json: make it this one."""
    (prefix / "package.json").write_text('{"private": true}\n')


def registry_only_shrinkwrap(shrinkwrap: Path) -> list[str]:
    """Points every dependency that the lock file takes from elsewhere (a GitHub commit) at the npm
    registry's tarball of the same name and version. Returns the names it changed."""
    lock = json.loads(shrinkwrap.read_text())
    redirected = []
    for key, entry in lock.get("packages", {}).items():
        resolved = entry.get("resolved")
        if not key or not resolved or resolved.startswith(REGISTRY + "/"):
            continue
        name = key.rsplit("node_modules/", 1)[-1]
        entry["resolved"] = f"{REGISTRY}/{name}/-/{name.split('/')[-1]}-{entry['version']}.tgz"
        entry.pop("integrity", None)
        redirected.append(name)
    shrinkwrap.write_text(json.dumps(lock, indent=2) + "\n")
    return redirected


def link_system_ripgrep(vscode: Path) -> None:
    """VS Code's search runs @vscode/ripgrep's bin/rg, which its postinstall downloads from GitHub."""
    target = vscode / "node_modules" / "@vscode" / "ripgrep" / "bin" / "rg"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    target.symlink_to(RIPGREP)


def finish_postinstall(package: Path, vscode: Path) -> None:
    """The rest of code-server's postinstall: the asar name VS Code loads its modules under, and the
    Linux variants of two scripts."""
    link(vscode / "node_modules.asar", "node_modules")
    link(vscode / "bin" / "remote-cli" / "code-server", "code-linux.sh")
    link(vscode / "bin" / "helpers" / "browser.sh", "browser-linux.sh")


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


# --- running the tools ------------------------------------------------------------------------


def npm(say: Say, cwd: Path, *args: str) -> None:
    # npm_config_nodedir: node-gyp compiles against the installed headers rather than downloading them.
    env = dict(os.environ, npm_config_nodedir=str(NODE_HEADERS.parent.parent), npm_config_update_notifier="false")
    timed(say, f"npm {' '.join(args)} (in {cwd.name})", ["npm", "--no-audit", "--no-fund", *args], cwd=cwd, env=env)


def timed(say: Say, what: str, command: list[str], cwd: Path | None = None, env: dict | None = None) -> None:
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        raise SetupError(f"{what} failed (exit {done.returncode}):\n{output}")
    say(f"  {what}: {time.monotonic() - started:.1f} s")


def main() -> int:
    try:
        installed = install()
    except SetupError as error:
        print(f"install.py: {error}", file=sys.stderr)
        return 1
    print(f"code-server: {installed.code_server}\nplaywright-core: {installed.playwright_core}\nchromium: {installed.chromium}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
