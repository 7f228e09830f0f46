"""Which errors the CLIs report as one line: the project's `InputError`s and `OSError`, nothing else."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from prototxt import CaffeError, ConversionError, InputError
from senet_repro.cli._common import USER_ERRORS, user_errors
from tests.cli_assertions import assert_one_line_error

ROOT = Path(__file__).resolve().parent.parent


def _raising(error: Exception) -> click.Command:
    @click.command()
    @user_errors
    def command() -> None:
        raise error

    return command


@pytest.mark.parametrize(
    "error",
    [
        InputError("bad option"),
        CaffeError("bad net"),
        ConversionError("weights for another net"),
        FileNotFoundError(2, "No such file", "x.caffemodel"),
    ],
)
def test_input_errors_and_os_errors_are_one_line(error: Exception) -> None:
    assert_one_line_error(CliRunner().invoke(_raising(error), []), str(error))


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("missing"), TypeError("a bug")])
def test_any_other_error_keeps_its_traceback(error: Exception) -> None:
    result = CliRunner().invoke(_raising(error), [])
    assert result.exit_code == 1 and result.exception is error


def test_user_errors_are_the_project_base_class_and_os_errors() -> None:
    assert set(USER_ERRORS) == {InputError, OSError}


def _error_classes() -> list[tuple[str, ast.ClassDef]]:
    """Every error type the packages define: a class named ...Error deriving from an exception
    (internal signals caught where they are raised, like selfcheck's OpenCVFailure, are not errors)."""
    found = []
    for package in ("prototxt", "converter", "senet_repro"):
        for source in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
                if (
                    isinstance(node, ast.ClassDef)
                    and node.name.endswith("Error")
                    and any(
                        isinstance(base, ast.Name) and base.id.endswith(("Error", "Exception"))
                        for base in node.bases
                    )
                ):
                    found.append((str(source.relative_to(ROOT)), node))
    return found


def test_every_project_error_is_an_input_error() -> None:
    """A new error type for bad input must reach the CLIs' one-line path."""
    names = {node.name for _, node in _error_classes()}
    for where, node in _error_classes():
        bases = {base.id for base in node.bases if isinstance(base, ast.Name)}
        if node.name == "InputError":
            continue  # the root, a ValueError
        assert bases & (names | {"InputError"}), f"{where}: {node.name}{sorted(bases)} is no InputError"
        assert not bases & set(dir(builtins)), f"{where}: {node.name} derives from a builtin error"
