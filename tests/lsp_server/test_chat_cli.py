"""`fimble chat` as a user runs it: a subprocess talking to the session's daemon (chat role: the
tiny random-weight model), sessions in a folder of the test's own."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fimble.chat.session import SessionStore



@pytest.fixture
def chat_env(fimble_env, tmp_path) -> dict:
    return {**fimble_env, "FIMBLE_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def workspace(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "retry.py").write_text("def compute_backoff(n):\n    return 2 ** n\n")
    (root / ".env").write_text("TOKEN=ghp_" + "a" * 36 + "\n")
    return root


def store_of(env: dict) -> SessionStore:
    return SessionStore(Path(env["FIMBLE_DATA_DIR"]) / "chats")


def fimble_chat(args: list[str], env: dict, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fimble", "chat", *args], input=stdin, capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_a_question_streams_the_answer_to_stdout(chat_env, workspace):
    done = fimble_chat(["What does @file:retry.py do?", "--max-tokens", "24"], chat_env, workspace)
    assert done.returncode == 0, done.stderr
    (session,) = store_of(chat_env).list().sessions
    question, answer = session.messages
    assert question.content == "What does @file:retry.py do?"
    assert answer.content and done.stdout == answer.content + "\n"
    assert [(a.kind, a.path) for a in session.attachments] == [("file", "retry.py")]
    assert f"fimble chat --session {session.id}" in done.stderr

    listed = fimble_chat(["--list"], chat_env, workspace)
    assert session.id in listed.stdout and "2 messages" in listed.stdout
    again = fimble_chat(["And then?", "--session", session.id, "--max-tokens", "8"], chat_env, workspace)
    assert again.returncode == 0, again.stderr
    assert len(store_of(chat_env).load(session.id).messages) == 4
    assert fimble_chat(["--delete", session.id], chat_env, workspace).returncode == 0
    assert store_of(chat_env).list().sessions == []
    missing = fimble_chat(["--delete", session.id], chat_env, workspace)
    assert missing.returncode == 1 and "no session" in missing.stderr


def test_stdin_lines_are_turns_of_one_session(chat_env, workspace):
    done = fimble_chat(["--max-tokens", "8"], chat_env, workspace, stdin="First question\n\nSecond question\n")
    assert done.returncode == 0, done.stderr
    (session,) = store_of(chat_env).list().sessions
    assert [(m.role, m.content) for m in session.messages][::2] == [("user", "First question"), ("user", "Second question")]
    assert done.stdout == session.messages[1].content + "\n" + session.messages[3].content + "\n"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["Read @file:.env"], "secret"),
        (["Read @file:missing.py"], "does not exist"),
        (["Hello", "--session", "0" * 32], "no chat session"),
        (["Hello", "--attach", "/nowhere/x.py"], "does not exist"),
    ],
)
def test_bad_input_is_a_clear_error_and_stores_nothing(chat_env, workspace, args, expected):
    done = fimble_chat(args, chat_env, workspace)
    assert done.returncode == 1
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert store_of(chat_env).list().sessions == []


def test_ctrl_c_stops_the_answer_not_the_session(chat_env, workspace):
    process = subprocess.Popen(
        [sys.executable, "-m", "fimble", "chat", "--max-tokens", "1500"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=chat_env, cwd=workspace,
    )  # fmt: skip
    try:
        first_output = threading.Event()
        output = bytearray()

        def read() -> None:
            while byte := process.stdout.read(1):
                output.extend(byte)
                first_output.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        process.stdin.write(b"Explain the whole project\n")
        process.stdin.flush()
        assert first_output.wait(120), process.stderr.read1().decode()
        process.send_signal(signal.SIGINT)
        for _ in range(600):  # the cancelled answer is saved before the next turn starts
            sessions = store_of(chat_env).list().sessions
            if sessions and len(sessions[0].messages) == 2:
                break
            threading.Event().wait(0.05)
        process.stdin.write(b"Second question\n")
        process.stdin.close()
        assert process.wait(120) == 0
        reader.join(10)
    finally:
        if process.poll() is None:
            process.kill()
    (session,) = store_of(chat_env).list().sessions
    assert [(m.role, m.finish_reason) for m in session.messages] == [("user", ""), ("assistant", "cancelled"), ("user", ""), ("assistant", session.messages[3].finish_reason)]
    assert session.messages[3].finish_reason in ("stop", "length")
    assert session.messages[1].content and output.decode(errors="replace").startswith(session.messages[1].content[:10])
