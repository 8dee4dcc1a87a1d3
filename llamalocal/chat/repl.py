"""`llamalocal chat`: the interactive loop over a Session, as ollama's `run` does it.

Line editing and the input history across runs are readline's.  Answers
stream to stdout as they are produced; notices and the `--stats` footer go
to stderr.  Ctrl-C stops the answer being generated (what was said so far
stays in the conversation) and returns to the prompt; Ctrl-D or /exit quits.
When stdin is not a terminal, each non-empty line is one user turn (or the
whole input, with `whole_input`) and only the answers are written.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional, TextIO

from ..errors import Error
from ..session import Session

PROMPT = ">>> "
CONTINUATION = "... "
MULTILINE = '"""'

HELP = """Commands:
  /help               this list
  /reset              forget the conversation (the system prompt stays)
  /system TEXT        set the system prompt (and start over)
  /save FILE          save the conversation, its cache and sampler state
  /load FILE          continue a saved conversation
  /stats              the last answer's figures and the context in use
  /set temp|top_p|top_k|min_p|seed VALUE
  /exit               quit (Ctrl-D too)
Ctrl-C stops an answer.  Start and end a message of several lines with \"\"\"."""

_SETTABLE = {"temp": ("temperature", float), "temperature": ("temperature", float), "top_p": ("top_p", float),
             "top_k": ("top_k", int), "min_p": ("min_p", float), "seed": ("seed", int)}


def history_file() -> Path:
    home = os.environ.get("LLAMALOCAL_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "llamalocal"
    return base / "chat_history"


class ChatLoop:
    def __init__(self, session: Session, *, load_session: Callable[[str], Session], max_tokens: int = -1,
                 show_stats: bool = False, out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.session = session
        self.load_session = load_session
        self.max_tokens = max_tokens
        self.show_stats = show_stats
        self.out, self.err = out, err

    # -- one turn -------------------------------------------------------------------------------------------

    def answer(self, text: str) -> None:
        """Streams the answer to one user message; Ctrl-C ends it early."""
        pieces = self.session.send(text, max_tokens=self.max_tokens)
        try:
            for piece in pieces:
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            pieces.close()  # the session keeps what was said so far
            self.err.write("\n[stopped]")
        finally:
            self.out.write("\n")
            self.out.flush()
        if self.show_stats:
            self.err.write(self.session.stats.footer() + "\n")
            self.err.flush()

    # -- non-interactive ------------------------------------------------------------------------------------

    def run_piped(self, stdin: TextIO, whole_input: bool = False) -> int:
        text = stdin.read()
        turns = [text] if whole_input else [line for line in text.splitlines()]
        for turn in turns:
            if turn.strip():
                self.answer(turn)
        return 0

    # -- interactive ----------------------------------------------------------------------------------------

    def run_interactive(self) -> int:
        readline = _readline()
        hist = history_file()
        if readline is not None:
            try:
                readline.read_history_file(hist)
            except OSError:
                pass  # no history yet
        self.err.write('Type /help for commands; Ctrl-D or /exit quits.\n')
        try:
            while True:
                try:
                    line = self._read_message()
                except KeyboardInterrupt:
                    self.err.write("\n(Ctrl-D or /exit to quit)\n")
                    continue
                except EOFError:
                    self.err.write("\n")
                    return 0
                if line is None or not line.strip():
                    continue
                if line.startswith("/"):
                    if self.command(line.strip()) == "exit":
                        return 0
                    continue
                try:
                    self.answer(line)
                except Error as e:
                    self.err.write(f"Error: {e}\n")
        finally:
            if readline is not None:
                try:
                    hist.parent.mkdir(parents=True, exist_ok=True)
                    readline.write_history_file(hist)
                except OSError as e:
                    self.err.write(f"warning: cannot save the input history to {hist}: {e}\n")

    def _read_message(self) -> Optional[str]:
        line = input(PROMPT)
        if not line.lstrip().startswith(MULTILINE):
            return line
        body = line.lstrip()[len(MULTILINE):]
        lines = []
        while True:
            if body.rstrip().endswith(MULTILINE):
                lines.append(body.rstrip()[: -len(MULTILINE)])
                return "\n".join(lines).strip("\n")
            lines.append(body)
            body = input(CONTINUATION)

    # -- slash commands -------------------------------------------------------------------------------------

    def command(self, line: str) -> Optional[str]:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        s = self.session
        try:
            if name in ("/exit", "/bye", "/quit"):
                return "exit"
            if name in ("/help", "/?"):
                self.err.write(HELP + "\n")
            elif name in ("/reset", "/clear"):
                s.reset()
                self.err.write("Conversation cleared.\n")
            elif name == "/system":
                s.system = arg or None
                s.reset()
                self.err.write("System prompt set; conversation cleared.\n" if arg else "System prompt removed.\n")
            elif name == "/save":
                if not arg:
                    raise _usage("/save FILE")
                self.err.write(f"Saved to {s.save(arg)}.\n")
            elif name == "/load":
                if not arg:
                    raise _usage("/load FILE")
                self.session = self.load_session(arg)
                self.err.write(f"Loaded {arg}: {len(self.session.messages)} messages, "
                               f"{len(self.session.tokens)} tokens in the cache.\n")
            elif name == "/stats":
                self.err.write(f"{s.stats.footer()}\ncontext: {len(s.tokens)} of {s.cache.n_ctx} tokens in use; "
                               f"{len(s.messages)} messages; sampling: {s.sampling}\n")
            elif name == "/set":
                key, _, value = arg.partition(" ")
                if key not in _SETTABLE or not value.strip():
                    raise _usage(f"/set {'|'.join(k for k in _SETTABLE if k != 'temperature')} VALUE")
                field, kind = _SETTABLE[key]
                try:
                    v = kind(value.strip())
                except ValueError:
                    raise _usage(f"/set {key} takes a number, not {value.strip()!r}") from None
                if field == "seed":
                    s.reseed(v)
                else:
                    s.set_sampling(**{field: v})
                self.err.write(f"Set {field} to {v}.\n")
            else:
                self.err.write(f"Unknown command {name}; /help lists them.\n")
        except Error as e:
            self.err.write(f"Error: {e}\n")
        return None


def _usage(text: str) -> Error:
    return Error(f"usage: {text}")


def _readline():
    try:
        import readline  # noqa: PLC0415 - line editing where the platform has it
    except ImportError:
        return None
    return readline
