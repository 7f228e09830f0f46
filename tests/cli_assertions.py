"""The CLI contract for bad input, shared by the CLI tests."""

from __future__ import annotations

from click.testing import Result


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """Exit 2, nothing on stdout, one stderr line `error: ...`, no traceback; returns the line.

    A progress bar (leave=False) may precede the line on stderr with carriage
    returns only: a terminal shows the error line alone.
    """
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.rstrip("\n").split("\n")
    shown = lines[-1].split("\r")[-1]
    assert len(lines) == 1 and shown.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in shown, shown
    return shown
