"""Benchmark of the chat service against ngircd; run ``python -m bench --help``."""
