"""Run a documented shell block as a user would: bash, the installed `keystile` on PATH.

Interactive prompts (``keystile user create alice`` asks for a password) get a real terminal:
the block runs under a pseudo-terminal, every password prompt is answered, and ``[y/N]``
confirmations get ``y``.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import subprocess
import termios
import time
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.conftest import KEYSTILE, clean_env

_PROMPT = re.compile(rb"(?i)(password|repeat for confirmation)[^\n]*:\s*$")
_CONFIRM = re.compile(rb"\[y/N\]:\s*$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TIMEOUT = 180.0


@dataclass
class Ran:
    returncode: int
    output: str  # stdout and stderr together, as the terminal showed them


def shell_env(**extra: str) -> dict[str, str]:
    """The test's environment without KEYSTILE_*, with this venv's bin first on PATH."""
    env = clean_env(**extra)
    env["PATH"] = f"{KEYSTILE.parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    return env


def _take_terminal() -> None:
    """In the child, after setsid: make the pseudo-terminal its controlling terminal, so
    getpass reads from /dev/tty as it does for a person."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _answer(leader: int, password: str) -> None:
    """Type the password once the prompt has switched echo off (getpass flushes anything
    typed before that)."""
    deadline = time.monotonic() + 2.0
    while termios.tcgetattr(leader)[3] & termios.ECHO and time.monotonic() < deadline:
        time.sleep(0.01)
    os.write(leader, password.encode() + b"\n")


def run_block(
    text: str, cwd: Path, *, env: dict[str, str] | None = None, password: str = "pw-doc-tests-1"
) -> Ran:
    """``bash -euo pipefail`` on ``text`` in ``cwd`` under a terminal; prompts get ``password``."""
    script = cwd / f"block-{time.monotonic_ns()}.sh"
    script.write_text(text)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", str(script)],
        cwd=cwd,
        env=env if env is not None else shell_env(),
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    os.close(follower)
    seen = b""
    pending = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the block did not finish in {TIMEOUT} s:\n{seen.decode()}")
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: every writer is gone
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                seen += chunk
                pending += chunk
                last = pending.splitlines()[-1] if pending.splitlines() else b""
                if _PROMPT.search(last):
                    _answer(leader, password)
                    pending = b""
                elif _CONFIRM.search(last):
                    os.write(leader, b"y\n")  # a person confirms what the docs say to do
                    pending = b""
            elif proc.poll() is not None:
                break
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    output = _ANSI.sub("", seen.decode(errors="replace")).replace("\r\n", "\n")
    return Ran(proc.returncode, output)
