"""The index table an indexer builds row by row."""

from __future__ import annotations

from raddino.data.datasets.index_table import TableBuilder


def test_table_builder_fills_columns_added_later() -> None:
    builder = TableBuilder("demo", ["A"])
    builder.add({"path": "/a.png"}, [1.0])
    builder.add({"path": "/b.png", "view": "PA"}, [0.0], exists=False)
    table = builder.build()
    assert table.columns["view"] == ["", "PA"]
    assert table.missing == [1]
    assert table.label("A").tolist() == [1.0, 0.0]
    assert table.select([1]).columns["path"] == ["/b.png"]
    assert table.select([1]).missing == [0]
