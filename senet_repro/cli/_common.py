"""What every CLI shares: one-line errors with exit code 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from prototxt import CaffeError

F = TypeVar("F", bound=Callable)

# Errors that mean "your input is wrong", as opposed to a bug in this program.
USER_ERRORS: tuple[type[BaseException], ...] = (CaffeError, FileNotFoundError, ValueError, KeyError, OSError)


class UserError(click.ClickException):
    """A bad input, reported as one line on stderr with exit code 2."""

    exit_code = 2

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
            message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            raise UserError(message) from None

    return wrapper  # type: ignore[return-value]
