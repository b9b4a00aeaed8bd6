"""Who can reach the daemon: only its own user, and only through its unix socket. Another local
user (`nobody`, from a child process that drops root) is refused, even with the runtime dir opened
up; and the daemon holds no network socket, before or after a model is loaded."""

from __future__ import annotations

import os
import pwd
import socket
import stat
from pathlib import Path

import psutil
import pytest

from tests.models.test_daemon import Conversation, daemon  # noqa: F401 (the module's own daemon)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user (nobody) needs root; run the tests as root to check it")


def connect_as(user: str, socket_path: Path) -> str:
    """What a process of `user` sees connecting to `socket_path`: "connected", or the error's name.
    A forked child drops root (groups, gid, then uid) before it connects, and reports its uid too."""
    account = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, only os._exit
        outcome = "child failed"
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(5)
                client.connect(str(socket_path))
                outcome = "connected"
        except BaseException as error:  # noqa: BLE001 (every outcome is reported, none raised)
            outcome = type(error).__name__
        finally:
            os.write(write_end, f"{os.getuid()} {outcome}".encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read().decode()
    os.waitpid(pid, 0)
    uid, outcome = report.split(" ", 1)
    assert int(uid) == account.pw_uid, f"the child did not become {user}: {report}"
    return outcome


@needs_root
def test_another_user_cannot_connect_to_the_daemon(daemon):  # noqa: F811
    runtime, _, _ = daemon
    assert connect_as("nobody", runtime / "daemon.sock") == "PermissionError"
    assert Conversation(runtime / "daemon.sock").ask({"id": 1, "op": "hello"})["ok"] is True  # its own user is served


@needs_root
def test_the_socket_itself_refuses_another_user_when_the_runtime_dir_is_opened(daemon):  # noqa: F811
    # The runtime dir (0700) is the first wall; the socket's own mode (0600) is the second, for a
    # runtime dir that someone made traversable.
    runtime, _, _ = daemon
    mode = stat.S_IMODE(os.stat(runtime).st_mode)
    os.chmod(runtime, 0o711)
    try:
        assert connect_as("nobody", runtime / "daemon.sock") == "PermissionError"
    finally:
        os.chmod(runtime, mode)


def network_sockets(process: psutil.Process) -> list:
    """The process's and its children's internet sockets (TCP and UDP, IPv4 and IPv6)."""
    processes = [process, *process.children(recursive=True)]
    return [connection for each in processes for connection in each.net_connections(kind="inet")]


def test_the_daemon_holds_no_network_socket(daemon):  # noqa: F811
    runtime, _, process = daemon
    daemon_process = psutil.Process(process.pid)
    assert network_sockets(daemon_process) == []
    # Loading a model brings torch and transformers in; they must not open a port either.
    assert Conversation(runtime / "daemon.sock").ask({"id": 1, "op": "model", "role": "single_line"})["ok"] is True
    sockets = network_sockets(daemon_process)
    assert [s for s in sockets if s.status == psutil.CONN_LISTEN or s.type == socket.SOCK_DGRAM] == [] and sockets == []
    assert any(path == str(runtime / "daemon.sock") for path in (c.laddr for c in daemon_process.net_connections(kind="unix")))
