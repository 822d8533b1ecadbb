"""Read an environment file exactly as systemd's ``EnvironmentFile=`` does, so check-config sees what the service gets.

The parser follows systemd's ``parse_env_file_internal`` (src/basic/env-file.c) state by state: ``#`` and ``;``
start comment lines; whitespace around keys and unquoted values is dropped; single quotes keep everything;
double quotes keep everything but honour the backslash before ``"``, ``\\``, ````` and ``$`` (and drop a
backslash-newline); an unquoted backslash escapes the next character and joins a line with the next. No
``$VARIABLE`` is expanded and no command runs. systemd then ignores assignments whose name is not a valid
variable name (``export FOO=1`` has the name ``export FOO``); those are reported rather than dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto

_WHITESPACE = " \t\n\r"
_NEWLINE = "\n\r"
_COMMENTS = "#;"
_SHELL_NEED_ESCAPE = '"\\`$'
_VALID_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """One ``NAME=value`` of the file, with the line it starts on."""

    name: str
    value: str
    line: int

    @property
    def valid(self) -> bool:
        """Whether systemd passes it to the service (a valid variable name)."""
        return bool(_VALID_NAME.match(self.name))


class _State(Enum):
    PRE_KEY = auto()
    KEY = auto()
    PRE_VALUE = auto()
    VALUE = auto()
    VALUE_ESCAPE = auto()
    SINGLE_QUOTE = auto()
    DOUBLE_QUOTE = auto()
    DOUBLE_QUOTE_ESCAPE = auto()
    COMMENT = auto()
    COMMENT_ESCAPE = auto()


def parse(text: str) -> list[Assignment]:  # noqa: PLR0912, PLR0915 -- systemd's env-file parser, one state after another
    """Every assignment in the file's text, in order (a later one of the same name wins, as in systemd)."""
    out: list[Assignment] = []
    state = _State.PRE_KEY
    key: list[str] = []
    value: list[str] = []
    key_ws: int | None = None  # where trailing whitespace of the key starts
    value_ws: int | None = None  # where trailing whitespace of an unquoted value starts
    line = 1
    start = 1

    def push(strip_value: bool) -> None:
        name = "".join(key[:key_ws] if key_ws is not None else key)
        text_value = "".join(value[:value_ws] if strip_value and value_ws is not None else value)
        out.append(Assignment(name=name, value=text_value, line=start))

    for c in text:
        if state is _State.PRE_KEY:
            if c in _COMMENTS:
                state = _State.COMMENT
            elif c not in _WHITESPACE:
                state = _State.KEY
                key, value, key_ws, start = [c], [], None, line
            elif c == "\n":
                line += 1
        elif state is _State.KEY:
            if c in _NEWLINE:
                state = _State.PRE_KEY
                line += c == "\n"
            elif c == "=":
                state = _State.PRE_VALUE
                value_ws = None
            else:
                if c not in _WHITESPACE:
                    key_ws = None
                elif key_ws is None:
                    key_ws = len(key)
                key.append(c)
        elif state is _State.PRE_VALUE:
            if c in _NEWLINE:
                push(strip_value=False)
                state = _State.PRE_KEY
                line += c == "\n"
            elif c == "'":
                state = _State.SINGLE_QUOTE
            elif c == '"':
                state = _State.DOUBLE_QUOTE
            elif c == "\\":
                state = _State.VALUE_ESCAPE
            elif c not in _WHITESPACE:
                state = _State.VALUE
                value.append(c)
        elif state is _State.VALUE:
            if c in _NEWLINE:
                push(strip_value=True)
                state = _State.PRE_KEY
                line += c == "\n"
            elif c == "\\":
                state = _State.VALUE_ESCAPE
                value_ws = None
            else:
                if c not in _WHITESPACE:
                    value_ws = None
                elif value_ws is None:
                    value_ws = len(value)
                value.append(c)
        elif state is _State.VALUE_ESCAPE:
            state = _State.VALUE
            if c not in _NEWLINE:
                value.append(c)
            else:
                line += c == "\n"
        elif state is _State.SINGLE_QUOTE:
            if c == "'":
                state = _State.PRE_VALUE
            else:
                value.append(c)
                line += c == "\n"
        elif state is _State.DOUBLE_QUOTE:
            if c == '"':
                state = _State.PRE_VALUE
            elif c == "\\":
                state = _State.DOUBLE_QUOTE_ESCAPE
            else:
                value.append(c)
                line += c == "\n"
        elif state is _State.DOUBLE_QUOTE_ESCAPE:
            state = _State.DOUBLE_QUOTE
            if c in _SHELL_NEED_ESCAPE:
                value.append(c)
            elif c != "\n":
                value.extend(("\\", c))
            else:
                line += 1
        elif state is _State.COMMENT:
            if c == "\\":
                state = _State.COMMENT_ESCAPE
            elif c in _NEWLINE:
                state = _State.PRE_KEY
                line += c == "\n"
        elif state is _State.COMMENT_ESCAPE:
            # since systemd v254 a backslash at the end of a comment no longer continues it
            if c in _NEWLINE:
                state = _State.PRE_KEY
                line += c == "\n"
            else:
                state = _State.COMMENT
    if state in (
        _State.PRE_VALUE,
        _State.VALUE,
        _State.VALUE_ESCAPE,
        _State.SINGLE_QUOTE,
        _State.DOUBLE_QUOTE,
        _State.DOUBLE_QUOTE_ESCAPE,
    ):
        push(strip_value=state is _State.VALUE)
    return out


def environment(assignments: list[Assignment]) -> dict[str, str]:
    """What the service's environment gets from the file: valid names only, the last assignment of each."""
    return {a.name: a.value for a in assignments if a.valid}
