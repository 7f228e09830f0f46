"""The project's error types: every failure caused by a user's input is an `InputError`.

The CLIs report exactly these (and `OSError`) as one line with exit code 2; any
other exception is a bug and keeps its traceback. The packages above add their
own subclasses (validation, model names, class labels) under `InputError`.
"""

from __future__ import annotations


class InputError(ValueError):
    """Base class: a file, name or option given to the toolkit is wrong (not a bug)."""


class OutputError(InputError):
    """An output path the toolkit must not write: an input, a special file, an existing file."""


class ConversionError(InputError):
    """Inputs that are fine on their own do not fit the conversion asked for
    (weights for another network, an output format that cannot hold the result)."""


class CaffeError(InputError):
    """Something is wrong with a Caffe file or net definition."""


class PrototxtSyntaxError(CaffeError):
    """A text prototxt does not parse; carries file, line, column and layer."""

    def __init__(
        self,
        message: str,
        *,
        path: str,
        line: int | None = None,
        column: int | None = None,
        layer: str | None = None,
    ) -> None:
        self.path, self.line, self.column, self.layer = path, line, column, layer
        where = path
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        in_layer = f" (in layer '{layer}')" if layer else ""
        super().__init__(f"{where}: {message}{in_layer}")


class CaffemodelFormatError(CaffeError):
    """A binary .caffemodel is truncated, corrupt or not a caffemodel at all."""

    def __init__(
        self, message: str, *, path: str, offset: int | None = None, layer: str | None = None
    ) -> None:
        self.path, self.offset, self.layer = path, offset, layer
        where = path if offset is None else f"{path} (byte {offset})"
        in_layer = f" (in layer '{layer}')" if layer else ""
        super().__init__(f"{where}: {message}{in_layer}")


class NetDefinitionError(CaffeError):
    """The net is syntactically fine but inconsistent (shapes, missing blobs)."""

    def __init__(self, message: str, *, layer: str | None = None) -> None:
        self.layer = layer
        super().__init__(f"layer '{layer}': {message}" if layer else message)


class WeightsMismatchError(NetDefinitionError):
    """A caffemodel's blobs do not fit the prototxt they are merged with."""
