"""Tests; helpers are imported as `from tests.<module> import ...`."""
