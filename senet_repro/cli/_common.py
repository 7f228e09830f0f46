"""What every CLI shares: one-line errors with exit code 2, never a traceback."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

import click

from prototxt import InputError, OutputError
from prototxt.atomic import check_writable, same_file

F = TypeVar("F", bound=Callable)

# Errors that mean "your input is wrong" (or unreadable), as opposed to a bug in this program,
# which keeps its traceback.
USER_ERRORS: tuple[type[Exception], ...] = (InputError, OSError)
# The longest error line shown; longer messages (torch's lists of state_dict keys) are cut.
MAX_ERROR_CHARS = 1000


def choices(vocabulary: type[StrEnum], *extra: str) -> click.Choice:
    """An option's choices: the values of one of the project's vocabularies (plus `extra`)."""
    return click.Choice([*extra, *(member.value for member in vocabulary)])


class UserError(click.ClickException):
    """A bad input, reported as one line on stderr with exit code 2."""

    exit_code = 2

    def format_message(self) -> str:
        """The message on one line whatever it wraps (a library's multi-line text), cut to
        `MAX_ERROR_CHARS`: the promise is one line per bad input."""
        text = re.sub(r"\s*[\r\n]+\s*", " ", super().format_message().strip())
        if len(text) > MAX_ERROR_CHARS:
            text = f"{text[:MAX_ERROR_CHARS]}... ({len(text) - MAX_ERROR_CHARS} more characters)"
        return text

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file or sys.stderr)


def user_errors(command: F) -> F:
    """Turn the expected input errors of a command into `UserError`s."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except click.ClickException:
            raise
        except USER_ERRORS as exc:
            raise UserError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


class OutputPath(click.Path):
    """A path option the command writes; every other path option is an input `guard_outputs` protects."""


# No click-side checks: `guard_outputs` reports every problem in one line.
OUTPUT = OutputPath(path_type=Path)

force_option = click.option(
    "--force",
    is_flag=True,
    help="Replace output files that already exist (never an input, a directory or a special file).",
)


def _given_inputs() -> list[Path]:
    """The values of the running command's input path options and arguments."""
    context = click.get_current_context(silent=True)
    if context is None:
        return []
    found: list[Path] = []
    for param in context.command.params:
        if not isinstance(param.type, click.Path) or isinstance(param.type, OutputPath):
            continue
        value = context.params.get(param.name or "")
        values = value if isinstance(value, tuple | list) else [value]
        found += [Path(v) for v in values if v is not None]
    return found


def guard_outputs(outputs: Iterable[Path], *, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse, before any work, every output that would replace something it must not.

    The policy of every command: an output is never one of the inputs (the
    command's path options and arguments, plus `inputs` it reads besides, compared
    after symlinks and by inode, so hard links count), never a directory, device,
    FIFO or socket, and never an existing file unless --force is given.
    """
    sources = [*_given_inputs(), *inputs]
    checked: list[Path] = []
    for output in outputs:
        for source in sources:
            if same_file(output, source):
                raise OutputError(f"{output}: is also an input ({source}); refusing to replace an input")
        for other in checked:
            if same_file(output, other):
                raise OutputError(f"{output}: written twice (also as {other})")
        check_writable(output, force=force)
        checked.append(output)
