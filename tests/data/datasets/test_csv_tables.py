"""Tables as datasets ship them: plain, gzip or zipped CSV."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

from raddino.data.datasets.csv_tables import open_table


def test_tables_read_plain_gzip_and_zip_with_stripped_header(tmp_path: Path) -> None:
    text = "ImageId, EncodedPixels\na,-1\nb,1 2\n"
    (tmp_path / "t.csv").write_text(text)
    with gzip.open(tmp_path / "t.csv.gz", "wt") as handle:
        handle.write(text)
    with zipfile.ZipFile(tmp_path / "t.csv.zip", "w") as archive:
        archive.writestr("inner/t.csv", text)
    for name in ("t.csv", "t.csv.gz", "t.csv.zip"):
        rows = list(open_table(tmp_path / name))
        assert rows == [
            {"ImageId": "a", "EncodedPixels": "-1"},
            {"ImageId": "b", "EncodedPixels": "1 2"},
        ]
