"""Dispatch ``python -m twist_lightning.bench NAME [options]`` to the benchmark module ``NAME``.

Each benchmark module exposes ``main(argv: list[str]) -> dict`` (the report it wrote); adding one is one entry in
:data:`BENCHES`.
"""

from __future__ import annotations

import importlib
import sys

#: Benchmark name -> module implementing ``main(argv)``.
BENCHES: dict[str, str] = {
    "subnet": "twist_lightning.bench.subnet",
    "strategy": "twist_lightning.bench.strategy",
    "inference": "twist_lightning.bench.inference",
    "evaluate": "twist_lightning.bench.evaluate",
    "prune": "twist_lightning.bench.prune",
    "data": "twist_lightning.bench.data",
}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark named by ``argv[0]`` with the remaining arguments; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    usage = f"usage: python -m twist_lightning.bench NAME [options]; NAME is one of: {', '.join(sorted(BENCHES))}"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    if argv[0] not in BENCHES:
        print(f"unknown benchmark {argv[0]!r}. {usage}", file=sys.stderr)
        return 2
    importlib.import_module(BENCHES[argv[0]]).main(argv[1:])
    return 0

if __name__ == "__main__":
    sys.exit(main())
