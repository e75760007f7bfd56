from __future__ import annotations

import json

from shoal.utils.jsonl import appender, read_lines, repair_tail


def test_a_crash_mid_write_loses_only_the_line_being_written(tmp_path):
    path = tmp_path / "log.jsonl"
    with appender(path, fresh=True) as out:
        out.write({"n": 0})
        out.write({"n": 1})
    with open(path, "a") as fh:
        fh.write('{"n": 2, "cut')                      # the crash
    lines, truncated = read_lines(path)
    assert [json.loads(line)["n"] for _, line in lines] == [0, 1] and truncated
    assert repair_tail(path) == len('{"n": 2, "cut')
    with appender(path) as out:
        out.write({"n": 2})
    lines, truncated = read_lines(path)
    assert [(number, json.loads(line)["n"]) for number, line in lines] == [(1, 0), (2, 1), (3, 2)]
    assert not truncated


def test_a_whole_last_record_without_its_newline_is_kept_and_ended(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"n": 0}\n{"n": 1}')
    lines, truncated = read_lines(path)
    assert len(lines) == 2 and not truncated
    assert repair_tail(path) == 0 and path.read_text().endswith("}\n")
    with appender(path) as out:
        out.write({"n": 2})
    assert [json.loads(line)["n"] for _, line in read_lines(path)[0]] == [0, 1, 2]
    with appender(path, fresh=True) as out:
        out.write({"n": 9})
    assert path.read_text() == '{"n":9}\n'
