"""Result tables: the fixed-width console table, evaluation rows with pruning columns, the CSV (tables.py)."""

from __future__ import annotations

import csv
from pathlib import Path

from twist_lightning.bench import common as bench_common
from twist_lightning.tables import TABLE_COLUMNS, format_cell, format_table, table_columns, table_rows, write_csv


def _result(methods: bool = False) -> dict:
    row = {"size": 2, "heads": 2, "ffn": 2, "mean_ppl": 20.0, "std_ppl": 1.0, "min_ppl": 19.0, "max_ppl": 21.0,
           "importance_ppl": 18.0, "random_ppl": [19.0, 21.0]}
    if methods:
        row["methods"] = {"random": 20.0, "flap": 12.0}
        row["gap_closed"] = {"random": 0.0, "flap": 0.8}
    return {"full": {"ppl": 10.0}, "sizes": [row]}


def test_format_table_aligns_and_blanks_missing_cells() -> None:
    lines = format_table([{"name": "dense", "x": 1.23456}, {"name": "a"}], ["name", "x"]).splitlines()
    assert lines == ["name       x", "-----  -----", "dense  1.235", "a           "]
    assert format_cell(0.000123456) == "0.0001235" and format_cell(3) == "3" and format_cell(None) == "None"
    assert bench_common.format_table is format_table  # the benchmarks' old import keeps working


def test_table_rows_and_columns_with_and_without_methods() -> None:
    plain = _result()
    assert table_columns(plain) == TABLE_COLUMNS
    assert table_rows(plain) == [{k: v for k, v in {**plain["sizes"][0], "full_ppl": 10.0}.items()
                                  if k in TABLE_COLUMNS}]
    pruned = _result(methods=True)
    assert table_columns(pruned) == [*TABLE_COLUMNS, "flap_ppl", "flap_gap"]
    row = table_rows(pruned)[0]
    assert row["flap_ppl"] == 12.0 and row["flap_gap"] == 0.8 and row["random_gap"] is None  # random closes nothing
    assert table_columns({"full": {"ppl": 1.0}, "sizes": []}) == TABLE_COLUMNS


def test_write_csv_takes_every_key_as_a_column(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    write_csv([{"a": 1}, {"a": 2, "b": "x"}], out)
    assert list(csv.DictReader(out.open())) == [{"a": "1", "b": ""}, {"a": "2", "b": "x"}]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temporary file left behind
