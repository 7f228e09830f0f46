"""Benchmarks; run one as `python -m bench.<script>` from the repository root."""
