"""config.envfile reads an env file the way systemd's EnvironmentFile= does (src/basic/env-file.c)."""

from __future__ import annotations

import pytest

from config.envfile import environment, parse


def env(text: str) -> dict[str, str]:
    """What the service's environment gets from the text."""
    return environment(parse(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\nB=two words\n", {"A": "1", "B": "two words"}),
        ("# comment\n; also a comment\n\n  A = 1  \n", {"A": "1"}),
        ('A=" padded "\n', {"A": " padded "}),
        ("A='single $HOME \"kept\"'\n", {"A": 'single $HOME "kept"'}),
        ('A="esc \\" \\\\ \\$ \\` \\x"\n', {"A": 'esc " \\ $ ` \\x'}),
        ("A=$HOME/x\n", {"A": "$HOME/x"}),
        ("A=one\\\ntwo\n", {"A": "onetwo"}),
        ("A=a\\ b\n", {"A": "a b"}),
        ('A="x"y\n', {"A": "xy"}),
        ("A=0.8 # not a comment\n", {"A": "0.8 # not a comment"}),
        ("A=1\nA=2\n", {"A": "2"}),
        ("A=\n", {"A": ""}),
        ("NOVALUE\nA=1", {"A": "1"}),
        ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
        ("# a comment ending in a backslash \\\nA=1\n", {"A": "1"}),
    ],
)
def test_values_as_systemd_reads_them(text: str, expected: dict[str, str]) -> None:
    """Comments, whitespace, quotes, escapes and continuations give the values systemd passes on."""
    assert env(text) == expected


def test_export_lines_are_not_variables() -> None:
    """``export A=1`` names a variable ``export A``, which systemd ignores: reported as invalid, not passed on."""
    [assignment] = parse("export A=1\n")
    assert assignment.name == "export A" and not assignment.valid
    assert env("export A=1\n") == {}


def test_line_numbers_point_at_each_assignment() -> None:
    """Each assignment knows the line it starts on, comments and continuations counted."""
    text = "# head\n\nA=1\nB=long\\\nvalue\nC='multi\nline'\nD=4\n"
    assert [(a.name, a.line) for a in parse(text)] == [("A", 3), ("B", 4), ("C", 6), ("D", 8)]
