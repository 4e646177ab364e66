"""What the command prints: human durations and ages, aligned tables, colour only where it belongs."""

from __future__ import annotations

import io

import pytest

from dramatiq_tracker.ops.cli.output import PLAIN, Column, Style, plural, table, use_colour
from dramatiq_tracker.ops.formatting import age, parse_duration


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("30s", 30_000), ("1.5s", 1500), ("5m", 300_000), ("2h", 7_200_000), ("1d", 86_400_000),
     ("1h30m", 5_400_000), (" 2m 5s ", 125_000), ("0s", 0)],
)  # fmt: skip
def test_human_durations_are_read_as_milliseconds(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["30", "", "5 minutes", "-5s", "1x", "s", "1h30"])
def test_a_duration_without_a_known_unit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("ms", "text"),
    [(None, "-"), (-5, "0.0s"), (0, "0.0s"), (1234, "1.2s"), (9_999, "10.0s"), (10_000, "10s"), (59_999, "59s"),
     (185_000, "3m05s"), (7_260_000, "2h01m"), (273_600_000, "3d04h")],
)  # fmt: skip
def test_ages_are_shown_in_human_units(ms: int | None, text: str) -> None:
    assert age(ms) == text


def test_counts_agree_with_their_nouns() -> None:
    assert (plural(0, "worker"), plural(1, "worker"), plural(2, "message")) == ("0 workers", "1 worker", "2 messages")


def test_tables_are_aligned_numbers_to_the_right_and_padded_before_they_are_coloured() -> None:
    columns = [Column("NAME"), Column("STATE", paint=lambda style, text: style.state(text)), Column("N", True)]
    rows = [("a", "alive", 1), ("longer", "dead", 100)]

    assert table(columns, rows, PLAIN) == ["NAME    STATE    N", "a       alive    1", "longer  dead   100"]
    coloured = table(columns, rows, Style(colour=True))
    assert coloured[1] == "a       \x1b[32malive\x1b[0m    1"
    assert coloured[0].startswith("\x1b[1mNAME  \x1b[0m")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_colour(Terminal()) and not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Terminal())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not use_colour(Terminal())
