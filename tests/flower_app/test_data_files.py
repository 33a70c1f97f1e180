"""A user's data file, broken in the ways real files are: every error names the file and line."""

import json
import logging

import numpy as np
import pytest

from flower_app.data.files import DataFileError, load_dataset


def _csv(tmp_path, text, name="data.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_integer_labels_are_read_as_integers_whatever_the_spacing(tmp_path):
    # " 1" and "0" once made a string column mapped the wrong way round
    data = load_dataset(_csv(tmp_path, 'text,label\ngood," 1"\nbad,0\nfine,1\n'))
    assert data.labels.tolist() == [1, 0, 1] and data.label_names == ("0", "1")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("a,1\nb,1\n", "every one of its 2 rows has label '1'"),  # one class: accuracy 1.0 proves nothing
        ("a,1\nb,\nc,0\n", "data.csv:3: empty label"),  # an empty cell is not a class
        ("a,1\nb,100000\nc,0\n", "data.csv:3: integer labels in column 'label' must be 0..2"),  # a typo
        ("a,1\nb,-1\nc,0\n", "data.csv:3: integer labels"),  # negative ids crash evaluation
    ],
)
def test_a_bad_label_column_is_refused_with_the_figures(tmp_path, rows, message):
    with pytest.raises(DataFileError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_dataset(_csv(tmp_path, "text,label\n" + rows))


def test_declared_classes_fix_the_ids_and_refuse_an_unseen_label(tmp_path):
    # Prepare
    good = _csv(tmp_path, "text,label\na,pos\nb,neg\nc,pos\n", "good.csv")
    typo = _csv(tmp_path, "text,label\na,pos\nb,postive\nc,neg\n", "typo.csv")

    # Execute
    data = load_dataset(good, classes="neg,neu,pos")

    # Assert
    assert data.label_names == ("neg", "neu", "pos") and data.labels.tolist() == [2, 0, 2]
    with pytest.raises(DataFileError, match=r"typo\.csv:3: label 'postive' is not among data\.classes"):
        load_dataset(typo, classes="neg,neu,pos")


def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path):
    data = load_dataset(_csv(tmp_path, "text,label\na,0\nb,1\n", encoding="utf-8-sig"))
    assert len(data) == 2


def test_bytes_that_are_not_utf8_are_named_with_the_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\u00e9,0\n".encode("latin-1") + b"ok,1\n")
    with pytest.raises(DataFileError, match=r"latin\.csv:2: not UTF-8"):
        load_dataset(str(path))


def test_a_very_long_field_is_read(tmp_path):
    data = load_dataset(_csv(tmp_path, f"text,label\n{'x' * 200_000},0\nb,1\n"))
    assert len(data.texts[0]) == 200_000


def test_a_broken_jsonl_line_or_a_missing_key_is_named(tmp_path):
    # Prepare
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": \n')
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"text": "a", "label": 0}\n{"text": "b"}\n')

    # Execute / Assert
    with pytest.raises(DataFileError, match=r"broken\.jsonl:2: not a JSON object"):
        load_dataset(str(broken))
    with pytest.raises(DataFileError, match=r"missing\.jsonl:2: no column 'label'"):
        load_dataset(str(missing))


def test_empty_and_null_texts_are_dropped_and_counted(tmp_path, caplog):
    # Prepare
    path = tmp_path / "texts.jsonl"
    rows = [{"text": "a", "label": 0}, {"text": "", "label": 1}, {"text": None, "label": 1}, {"text": "b", "label": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    # Execute
    with caplog.at_level(logging.WARNING):
        data = load_dataset(str(path))

    # Assert
    assert data.texts == ("a", "b") and np.array_equal(data.labels, [0, 1])
    assert "2 rows with an empty text dropped" in caplog.text
