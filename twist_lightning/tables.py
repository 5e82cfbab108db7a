"""Result tables: the console table every CLI and benchmark prints, evaluation rows and their CSV.

:func:`format_table` lays rows of dicts out as fixed-width text; :func:`table_rows` / :func:`table_columns` turn an
evaluation result (:func:`twist_lightning.evaluation.evaluate_subnets`) into one row per subnet size, pruning
methods as ``<method>_ppl`` / ``<method>_gap`` columns; :func:`write_csv` writes rows atomically.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twist_lightning.io import atomic_path
from twist_lightning.prune import Method

__all__ = ["TABLE_COLUMNS", "format_cell", "format_table", "table_columns", "table_rows", "write_csv"]

#: The columns of an evaluation table, before any pruning method's.
TABLE_COLUMNS = ["size", "heads", "ffn", "mean_ppl", "std_ppl", "min_ppl", "max_ppl", "importance_ppl", "full_ppl"]


def format_cell(v: Any) -> str:
    """One table cell: floats to 4 significant digits, anything else as ``str``."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Fixed-width text table of ``columns`` of ``rows`` (missing cells blank)."""
    cells = [[format_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([line(list(columns)), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One console/CSV row per size (pruning methods as ``<method>_ppl`` and ``<method>_gap`` columns)."""
    full = result["full"]["ppl"]
    rows = []
    for r in result["sizes"]:
        row = {**{k: r[k] for k in TABLE_COLUMNS if k in r}, "full_ppl": full}
        for m, ppl in r.get("methods", {}).items():
            row[f"{m}_ppl"] = ppl
            gap = r["gap_closed"][m]
            row[f"{m}_gap"] = None if gap is None or m == Method.random.value else round(gap, 3)
        rows.append(row)
    return rows


def table_columns(result: dict[str, Any]) -> list[str]:
    """:data:`TABLE_COLUMNS` plus each non-random pruning method's PPL and gap columns."""
    methods = list(result["sizes"][0].get("methods", {})) if result["sizes"] else []
    extra = [c for m in methods if m != Method.random.value for c in (f"{m}_ppl", f"{m}_gap")]
    return [*TABLE_COLUMNS, *extra]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``rows`` as a CSV with every key of any row as a column (atomic: complete or absent)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
