"""A device's data cache: a same-size rewrite of its file and another max-length are read again."""

import os

from flower_app.config.load import load_config
from flower_app.data.device_cache import DataSource, node_data

WORDS = "good film with a great plot and a fine cast that keeps the story moving to the very end"


def test_a_same_size_rewrite_of_the_data_file_is_read_again(tmp_path):
    # Prepare: one row labelled positive, cached
    config = load_config({"config": "test"})
    path, root = tmp_path / "mine.csv", tmp_path / "cache"
    path.write_text("text,label\ngood film,positive\n", encoding="utf-8")
    first = node_data(config, DataSource(7, 0, str(path)), root)
    stat = path.stat()

    # Execute: the same number of bytes, another label, a later modification time
    path.write_text("text,label\ngood film,negative\n", encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = node_data(config, DataSource(7, 0, str(path)), root)

    # Assert
    assert path.stat().st_size == stat.st_size
    assert first.labels.tolist() == [1] and again.labels.tolist() == [0]


def test_another_max_length_gives_rows_of_that_length(tmp_path):
    # Prepare: one long row, encoded at 16 tokens first
    path, root = tmp_path / "mine.csv", tmp_path / "cache"
    path.write_text(f"text,label\n{WORDS},positive\n", encoding="utf-8")
    long = node_data(load_config({"config": "test", "model.max-length": 16}), DataSource(7, 0, str(path)), root)

    # Execute
    short = node_data(load_config({"config": "test", "model.max-length": 6}), DataSource(7, 0, str(path)), root)

    # Assert
    assert [len(row) for row in long.ids] == [16] and [len(row) for row in short.ids] == [6]
