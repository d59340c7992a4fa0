"""`genz-speak chat` on the tiny model: the session's history and streaming, and the command itself
through a pseudo-terminal and through piped standard input."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from genz_speak.chat import ChatSession
from tests.conftest import python_env


@pytest.fixture(scope="module")
def session(tiny_model: Path) -> ChatSession:
    return ChatSession(tiny_model, system="Keep it short.", max_new_tokens=12, temperature=0.0)


def test_history_goes_into_the_next_prompt(session: ChatSession) -> None:
    session.reset()
    pieces = list(session.stream("What is the capital of France?"))
    assert len(pieces) > 1  # streamed, not one block at the end
    assert [m["role"] for m in session.history] == ["system", "user", "assistant"]
    assert session.history[2]["content"] == "".join(pieces).strip()
    prompt = session.prompt("And of Spain?")
    assert prompt.startswith("<|im_start|>system\nKeep it short.<|im_end|>")  # ours, not the default one
    assert prompt.index("What is the capital of France?") < prompt.index("And of Spain?")
    assert prompt.endswith("<|im_start|>assistant\n")
    session.reset()
    assert session.history == [{"role": "system", "content": "Keep it short."}]


def test_setting_stop_ends_the_answer_early(session: ChatSession) -> None:
    session.reset()
    full = list(session.stream("hi"))
    stop = threading.Event()
    short = []
    for piece in session.stream("hi again", stop):
        short.append(piece)
        stop.set()
    assert len(short) < len(full) - 3
    assert session.history[-2]["content"] == "hi again"  # the stopped turn is kept, as far as it got


def _read_until(fd: int, marker: bytes, timeout: float = 120.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {marker!r} within {timeout} s; got {out[-500:]!r}")
        out += os.read(fd, 4096)
    return out


def test_chat_in_a_terminal(tiny_model: Path) -> None:
    main, child = pty.openpty()
    cmd = [sys.executable, "-m", "genz_speak.cli", "chat", str(tiny_model), "--max-new-tokens", "6"]
    proc = subprocess.Popen(cmd, stdin=child, stdout=child, stderr=subprocess.PIPE, env=python_env())
    os.close(child)
    try:
        _read_until(main, b"you> ")
        os.write(main, b"why is the sky blue?\n")
        turn = _read_until(main, b"you> ")
        assert b"bot> " in turn
        os.write(main, b"/reset\n")
        _read_until(main, b"(new conversation)")
        os.write(main, b"\x04")  # Ctrl-D on an empty line: end of input
        assert proc.wait(timeout=60) == 0
        assert b"/reset starts over" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()
        os.close(main)


def test_chat_from_piped_input(tiny_model: Path) -> None:
    cmd = [sys.executable, "-m", "genz_speak.cli", "chat", str(tiny_model), "--max-new-tokens", "4"]
    proc = subprocess.run(
        cmd,
        input="hello\n\nsecond turn\n/exit\nnever read\n",
        capture_output=True,
        text=True,
        timeout=300,
        env=python_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("you> ", "bot> "))]
    assert [line[:5] for line in lines] == ["you> ", "bot> ", "you> ", "bot> "]
    assert "never read" not in proc.stdout


def test_chat_with_no_model_folder_says_so(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "genz_speak.cli", "chat", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=python_env(),
    )
    assert proc.returncode == 2 and "not a model folder" in proc.stderr
