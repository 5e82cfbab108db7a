"""Benchmarks run as ``python -m twist_lightning.bench NAME --out FILE`` (see ``__main__.BENCHES``)."""
