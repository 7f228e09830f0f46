"""The one error type the harness raises for bad input (a ValueError, so CLIs exit 2)."""


class ValidateError(ValueError):
    """Bad input to the validation harness: data, labels, weights, options."""
