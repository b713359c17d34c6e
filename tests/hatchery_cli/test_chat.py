"""`hatchery chat` as a person uses it: in a pseudo-terminal, in-process and against a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from generator_api.app import create_app
from hatchery_cli.chat import parse_value
from hatchery_cli.chat_backends import ChatError
from tests.conftest import SHIPPED_MODEL, engine_settings
from tests.support.server import LiveServer, serve

ROOT = Path(__file__).resolve().parents[2]
PROMPT = ">>> "


def chat_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hatchery_cli", "chat", *args]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home of its own: the readline history goes there, not to the user's."""
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def environment(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(home / "state"), "TERM": "dumb"}


@pytest.fixture
def spawn(home: Path) -> Iterator[Any]:
    children: list[pexpect.spawn] = []

    def start(*args: str) -> pexpect.spawn:
        command = chat_command(*args)
        child = pexpect.spawn(
            command[0], command[1:], cwd=ROOT, env=environment(home), encoding="utf-8",
            timeout=90, dimensions=(40, 200),
        )  # fmt: skip
        children.append(child)
        child.expect(PROMPT)
        return child

    yield start
    for child in children:
        child.close(force=True)


def leave(child: pexpect.spawn) -> int:
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    status: int = child.exitstatus
    return status


def transcript(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('chat') / 'hatchery.db'}"
    settings = engine_settings(
        url, models_dir, **{"model.default": SHIPPED_MODEL, "model.preload": [SHIPPED_MODEL]}
    )
    with serve(create_app(settings)) as live:
        yield live


def wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def running(live: LiveServer) -> int:
    count: int = live.app.state.engine.stats()["totals"]["running"]
    return count


# In-process ---------------------------------------------------------------------------------


def test_local_reply_streams_with_a_stats_line_and_set_changes_sampling(
    spawn: Any, tmp_path: Path
) -> None:
    child = spawn("--mode", "complete", "--max-tokens", "24", "--temperature", "1.0")
    for seed in (1, 2, 1):
        child.sendline(f"/set seed {seed}")
        child.expect(f"seed = {seed}")
        child.expect(PROMPT)
        child.sendline("ROMEO:")
        child.expect(r"24 tokens · TTFT \d+ ms")  # the dim line after the streamed reply
        child.expect(PROMPT)
    saved = tmp_path / "local.jsonl"
    child.sendline(f"/save {saved}")
    child.expect("saved 6 entries")
    child.expect(PROMPT)
    assert leave(child) == 0
    replies = [entry for entry in transcript(saved) if entry["role"] == "completion"]
    assert [r["sampling"]["seed"] for r in replies] == [1, 2, 1]
    assert all(r["tokens"] == 24 and r["content"] for r in replies)
    assert replies[0]["content"] == replies[2]["content"]  # the same seed, the same text
    assert replies[0]["content"] != replies[1]["content"]  # /set seed changed the sampling


def test_chat_mode_keeps_history_and_reset_clears_it(spawn: Any, tmp_path: Path) -> None:
    child = spawn("--max-tokens", "8", "--seed", "5", "--system", "Speak in verse.")
    for line in ("Good morrow", "How now?", "/reset", "Again"):
        child.sendline(line)
        child.expect(PROMPT)
    child.sendline("/set bogus 1")
    child.expect("unknown sampling field 'bogus'")
    child.expect(PROMPT)
    saved = tmp_path / "chat.jsonl"
    child.sendline(f"/save {saved}")
    child.expect(PROMPT)
    assert leave(child) == 0
    entries = transcript(saved)
    assert [e["role"] for e in entries] == ["user", "assistant"] * 3
    assert [e["content"] for e in entries if e["role"] == "user"] == [
        "Good morrow", "How now?", "Again"
    ]  # fmt: skip


def test_piped_stdin_answers_each_line(home: Path, tmp_path: Path) -> None:
    saved = tmp_path / "piped.jsonl"
    lines = f"ROMEO:\nJULIET:\n/save {saved}\n"
    done = subprocess.run(
        chat_command("--mode", "complete", "--max-tokens", "16", "--seed", "3"),
        input=lines, capture_output=True, text=True, cwd=ROOT, env=environment(home), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    replies = [e["content"] for e in transcript(saved) if e["role"] == "completion"]
    assert len(replies) == 2 and all(replies)
    assert done.stdout == "".join(reply + "\n" for reply in replies)  # replies only, in order


def test_unknown_model_exits_2(home: Path) -> None:
    done = subprocess.run(
        chat_command("--model", "no-such-model"), input="", capture_output=True, text=True,
        cwd=ROOT, env=environment(home), timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "no-such-model" in done.stderr


# Against a server ---------------------------------------------------------------------------


def test_remote_reply_and_ctrl_c_frees_the_slot(
    spawn: Any, server: LiveServer, tmp_path: Path
) -> None:
    child = spawn("--url", server.url, "--max-tokens", "16", "--seed", "1")
    child.sendline("Hello")
    child.expect(r"16 tokens · TTFT \d+ ms")  # usage from the server's stream
    child.expect(PROMPT)
    child.sendline("/set max_tokens 4000")
    child.expect(PROMPT)
    child.sendline("Tell me everything")
    wait_until(lambda: running(server) == 1, what="the reply to start on the server")
    child.sendintr()
    child.expect("aborted")
    child.expect(PROMPT)
    wait_until(lambda: running(server) == 0, what="the server to free the aborted slot")
    saved = tmp_path / "remote.jsonl"
    child.sendline(f"/save {saved}")
    child.expect(PROMPT)
    child.sendintr()  # Ctrl-C at the prompt: a hint, then a second one leaves
    child.expect("Ctrl-C again")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    replies = [e for e in transcript(saved) if e["role"] == "assistant"]
    assert [r["aborted"] for r in replies] == [False, True]
    assert replies[0]["tokens"] == 16 and replies[0]["model"] == SHIPPED_MODEL


def test_remote_model_switch_checks_the_server(spawn: Any, server: LiveServer) -> None:
    child = spawn("--url", server.url, "--max-tokens", "4")
    child.sendline("/model no-such-model")
    child.expect("has no model 'no-such-model'")
    child.expect(PROMPT)
    child.sendline("/model bdh-nano")
    child.expect("model bdh-nano")
    child.expect(PROMPT)
    assert leave(child) == 0


# Pure logic ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("temperature", "0.5", 0.5),
        ("max_tokens", "12", 12),
        ("seed", "none", None),
        ("stop", "END", ["END"]),
        ("stop", '["a", "b"]', ["a", "b"]),
    ],
)
def test_parse_value(name: str, raw: str, value: Any) -> None:
    assert parse_value(name, raw) == value


@pytest.mark.parametrize(("name", "raw"), [("max_tokens", "many"), ("nope", "1"), ("stop", "[1]")])
def test_parse_value_refuses(name: str, raw: str) -> None:
    with pytest.raises(ChatError):
        parse_value(name, raw)
