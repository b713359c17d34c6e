"""`hatchery chat`: talk to a model in the terminal, in-process or against any OpenAI server.

    hatchery chat                                   the shipped model, in this process
    hatchery chat --url http://127.0.0.1:8000       any OpenAI-compatible server
    hatchery chat --mode complete --temperature 0   continue each line instead of chatting
    echo "ROMEO:" | hatchery chat --mode complete   piped: one prompt per line, replies only

In chat mode the conversation is kept and rendered with the model's chat template (in-process)
or sent as messages (to a server, which applies its own). Replies stream as they are generated;
a dim line after each gives tokens, time to first token and decode tokens/s. Ctrl-C stops the
reply in progress (the server frees its slot); Ctrl-C again at the prompt, or Ctrl-D, exits.
Slash commands (``/help``) change the model, the system prompt and any sampling field.
Line editing and history come from readline, with the history kept in
``$XDG_STATE_HOME/hatchery/chat_history`` (default ``~/.local/state``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.markup import escape

from hatchery_cli.chat_backends import (
    SAMPLING_FIELDS,
    Backend,
    ChatError,
    Mode,
    Reply,
    Turn,
)

# The default chat template speaks as "User:" and "Assistant:"; a byte model that runs on past
# its turn would start the user's next line, so chat mode stops there unless told otherwise.
CHAT_STOP = "\nUser:"
MODELS = Path("models")

HELP = """\
/reset              forget the conversation (the system prompt stays)
/system TEXT        set the system prompt (empty: none)
/set FIELD VALUE    set a sampling field (/set alone lists them; VALUE none unsets)
/model NAME         talk to another model
/save FILE          write the transcript as JSON lines
/help               this list
/exit               leave (also Ctrl-D, or Ctrl-C twice)"""


@dataclass
class Conversation:
    """What the next turn is made of, and everything said so far."""

    mode: Mode
    model: str
    system: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)

    def turn(self, text: str) -> Turn:
        if self.mode == "complete":
            return Turn("complete", self.model, prompt=text, sampling=self.sampling)
        system = [{"role": "system", "content": self.system}] if self.system else []
        messages = [*system, *self.messages, {"role": "user", "content": text}]
        return Turn("chat", self.model, messages=messages, sampling=self.sampling)

    def record(self, text: str, reply: Reply, *, aborted: bool) -> None:
        if self.mode == "chat":
            self.messages += [
                {"role": "user", "content": text},
                {"role": "assistant", "content": reply.text},
            ]
        now = datetime.now(UTC).isoformat()
        self.transcript += [
            {"role": "user", "content": text, "model": self.model, "at": now},
            {
                "role": "assistant" if self.mode == "chat" else "completion",
                "content": reply.text,
                "model": self.model,
                "aborted": aborted,
                "tokens": reply.tokens,
                "ttft_s": reply.ttft_s,
                "tokens_per_s": reply.tokens_per_s,
                "sampling": dict(self.sampling),
            },
        ]


def parse_value(name: str, raw: str) -> Any:
    """A `/set` value in the field's type; ``none`` unsets. Raises ``ChatError``."""
    kind = SAMPLING_FIELDS.get(name)
    if kind is None:
        raise ChatError(f"unknown sampling field {name!r}; known: {', '.join(SAMPLING_FIELDS)}")
    if raw.strip().lower() in ("none", "null", ""):
        return None
    try:
        if kind is list:
            value = json.loads(raw) if raw.lstrip().startswith("[") else [raw]
            if not all(isinstance(item, str) for item in value):
                raise ValueError("a list of strings")
            return value
        return kind(raw)
    except ValueError as exc:
        raise ChatError(f"{name} takes {kind.__name__} values, not {raw!r} ({exc})") from None


class ChatSession:
    """The read-reply loop over one backend; ``interactive`` picks prompts and stats lines."""

    def __init__(
        self,
        backend: Backend,
        conversation: Conversation,
        *,
        console: Console,
        interactive: bool,
    ) -> None:
        self.backend = backend
        self.conversation = conversation
        self.console = console
        self.interactive = interactive

    # One line ------------------------------------------------------------------------------

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the session should end."""
        if line.startswith("/"):
            return self._command(line)
        if line.strip():
            self._reply(line)
        return True

    def _reply(self, text: str) -> None:
        conversation = self.conversation
        try:
            reply = self.backend.send(conversation.turn(text))
        except ChatError as exc:
            self._error(str(exc))
            return
        aborted = False
        try:
            for piece in reply:
                self.console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
        except KeyboardInterrupt:
            aborted = True
            reply.close()
        except ChatError as exc:
            reply.close()
            self.console.print()
            self._error(str(exc))
            return
        self.console.print()
        conversation.record(text, reply, aborted=aborted)
        if self.interactive:
            self.console.print(_stats_line(reply, aborted=aborted), style="dim", highlight=False)

    # Slash commands ------------------------------------------------------------------------

    def _command(self, line: str) -> bool:
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        conversation = self.conversation
        if name in ("exit", "quit"):
            return False
        if name == "help":
            self._info(HELP)
        elif name == "reset":
            conversation.messages.clear()
            self._info("conversation cleared")
        elif name == "system":
            conversation.system = argument or None
            self._info(f"system prompt {'set' if argument else 'cleared'}")
        elif name == "set":
            self._set(argument)
        elif name == "model" and argument:
            try:
                self.backend.check_model(argument)
            except ChatError as exc:
                self._error(str(exc))
            else:
                conversation.model = argument
                self._info(f"model {argument}")
        elif name == "save" and argument:
            self._save(Path(argument).expanduser())
        else:
            self._error(f"unknown command {line.split()[0]!r}: /help lists them")
        return True

    def _set(self, argument: str) -> None:
        sampling = self.conversation.sampling
        if not argument:
            shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in sampling.items()) or "defaults"
            self._info(f"sampling: {shown}")
            return
        name, _, raw = argument.partition(" ")
        try:
            value = parse_value(name, raw)
        except ChatError as exc:
            self._error(str(exc))
            return
        if value is None:
            sampling.pop(name, None)
            self._info(f"{name} unset")
        else:
            sampling[name] = value
            self._info(f"{name} = {json.dumps(value)}")

    def _save(self, path: Path) -> None:
        try:
            with path.open("w", encoding="utf-8") as file:
                for entry in self.conversation.transcript:
                    file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        except OSError as exc:
            self._error(f"cannot write {path}: {exc}")
            return
        self._info(f"saved {len(self.conversation.transcript)} entries to {path}")

    def _info(self, message: str) -> None:
        # Piped sessions print replies only, so scripts can read them line by line.
        if self.interactive:
            self.console.print(message, style="cyan", markup=False, highlight=False)

    def _error(self, message: str) -> None:
        Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False)

    # The loops -----------------------------------------------------------------------------

    def run_interactive(self, read: Any = input) -> None:
        """Prompt until /exit, Ctrl-D, or Ctrl-C twice in a row."""
        interrupted = False
        while True:
            try:
                line = read(">>> ")
            except EOFError:
                self.console.print()
                return
            except KeyboardInterrupt:
                if interrupted:
                    self.console.print()
                    return
                interrupted = True
                self.console.print("\n(Ctrl-C again or Ctrl-D to exit)", style="dim")
                continue
            interrupted = False
            try:
                if not self.handle(line):
                    return
            except KeyboardInterrupt:  # between pieces of bookkeeping, not mid-reply
                interrupted = True

    def run_piped(self, lines: TextIO) -> None:
        """One prompt (or slash command) per line of ``lines``; the replies on stdout."""
        for raw in lines:
            if not self.handle(raw.rstrip("\r\n")):
                return


def _stats_line(reply: Reply, *, aborted: bool) -> str:
    tokens = "?" if reply.tokens is None else f"{reply.tokens}"
    parts = [f"{tokens} tokens"]
    if reply.ttft_s is not None:
        parts.append(f"TTFT {reply.ttft_s * 1000:.0f} ms")
    if reply.tokens_per_s is not None:
        parts.append(f"{reply.tokens_per_s:.1f} tok/s")
    if aborted:
        parts.append("aborted")
    return " · ".join(parts)


def history_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "hatchery" / "chat_history"


def with_line_editing(session: ChatSession) -> None:
    """Run ``session`` interactively, with readline's editing and a persistent history."""
    try:
        import readline
    except ImportError:  # no readline on this platform: plain input() still works
        session.run_interactive()
        return
    path = history_file()
    with contextlib.suppress(OSError):  # a first session has no history yet
        readline.read_history_file(path)
    readline.set_history_length(1000)
    try:
        session.run_interactive()
    finally:
        with contextlib.suppress(OSError):  # an unwritable home loses the history only
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)


def start(
    backend: Backend,
    *,
    mode: Mode,
    model: str | None,
    system: str | None,
    sampling: dict[str, Any],
    stdin: TextIO = sys.stdin,
) -> int:
    """Open the conversation and run it; the exit status."""
    console = Console(highlight=False)
    try:
        name = model or backend.default_model()
        backend.check_model(name)
    except ChatError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    if mode == "chat" and "stop" not in sampling:
        sampling = {**sampling, "stop": [CHAT_STOP]}
    conversation = Conversation(mode=mode, model=name, system=system, sampling=sampling)
    interactive = stdin.isatty()
    session = ChatSession(backend, conversation, console=console, interactive=interactive)
    try:
        if interactive:
            console.print(
                f"[bold]{escape(name)}[/bold] [dim]({mode} mode, {escape(backend.describe())});"
                " /help for commands, Ctrl-D to exit[/dim]"
            )
            with_line_editing(session)
        else:
            session.run_piped(stdin)
    finally:
        backend.close()
    return 0


def chat_command(
    model: Annotated[str | None, typer.Option(help="Model name (default: the server's).")] = None,
    url: Annotated[
        str | None, typer.Option(help="An OpenAI-compatible server; default: in-process.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="HATCHERY_API_KEY", help="Key for --url.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt (chat mode).")] = None,
    mode: Annotated[
        Mode, typer.Option(help="chat: a conversation; complete: continue each line.")
    ] = "chat",
    temperature: Annotated[float | None, typer.Option()] = None,
    top_p: Annotated[float | None, typer.Option()] = None,
    top_k: Annotated[int | None, typer.Option()] = None,
    max_tokens: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    models_dir: Annotated[Path, typer.Option(help="Models directory (in-process).")] = MODELS,
) -> None:
    """Chat with a model (or continue prompts) in the terminal, streaming its replies."""
    from hatchery_cli.chat_backends import LocalBackend, RemoteBackend

    flags = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "max_tokens": max_tokens,
        "seed": seed,
        "stop": stop or None,
    }
    sampling = {name: value for name, value in flags.items() if value is not None}
    backend: Backend = RemoteBackend(url, api_key) if url else LocalBackend(models_dir)
    status = start(backend, mode=mode, model=model, system=system, sampling=sampling)
    raise typer.Exit(status)
