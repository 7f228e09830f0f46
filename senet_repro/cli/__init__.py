"""Command-line entry points: senet-convert, senet-validate, senet-analyze."""
