"""The one error type the harness raises for bad input (an InputError, so CLIs exit 2)."""

from prototxt import InputError


class ValidateError(InputError):
    """Bad input to the validation harness: data, labels, weights, options."""
