"""Question and teacher records: round trips, and every bad input named by file, line and field."""

import json

import pytest

from tinythinker_jax.data import records
from tinythinker_jax.data.records import DataError

GOOD = {"id": "q1", "question": "Pick one", "options": [{"label": "A", "text": "x"}, {"label": "B", "text": "y"}],
        "answer": "B"}
RATIONALE = {"recall": "y is right.", "analyze": {"A": "x is not it.", "B": "y fits."}}


def write_lines(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def test_question_and_teacher_record_round_trip(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [{**GOOD, "facts": ["f"], "rationales": [RATIONALE]}])
    (record,) = records.read_teacher_records(path)
    assert record.question == records.make_question("q1", "Pick one", [("A", "x"), ("B", "y")], "B", ["f"])
    assert record.rationales[0].analyze == {"A": "x is not it.", "B": "y fits."}
    again = write_lines(tmp_path / "again.jsonl", [records.teacher_record_to_json(record)])
    assert records.read_teacher_records(again) == [record]
    assert records.read_questions(path) == [record.question]


@pytest.mark.parametrize("row, line, field, message", [
    ('{"id": "q2", "question": ', 2, None, "not valid JSON"),
    ({k: v for k, v in GOOD.items() if k != "question"} | {"id": "q2"}, 2, "question", "missing"),
    (GOOD | {"id": "q2", "answer": "C"}, 2, "answer", "not one of the labels"),
    (GOOD, 2, "id", r"duplicate id 'q1' \(first at line 1\)"),
    (GOOD | {"id": "q2", "options": [{"label": "A", "text": "x"}, {"label": "B"}]}, 2, "options[1].text", "missing"),
    (GOOD | {"id": "q2", "options": [{"label": "A", "text": "x"}, {"label": "A", "text": "y"}]}, 2, "options",
     "not distinct"),
    (GOOD | {"id": "q2", "question": 7}, 2, "question", "expected a string"),
    ([1, 2], 2, None, "expected a JSON object"),
])
def test_bad_question_lines_name_file_line_and_field(tmp_path, row, line, field, message):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, row])
    with pytest.raises(DataError, match=message) as error:
        records.read_questions(path)
    assert (error.value.path, error.value.line, error.value.field) == (path, line, field)
    assert str(error.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("rationales, field, message", [
    ([], "rationales", "is empty"),
    ([{"recall": "r", "analyze": {"A": "a"}}], "rationales[0].analyze.B", "missing"),
    ([{"recall": "r", "analyze": {"A": "a", "B": "b", "C": "c"}}], "rationales[0].analyze", r"\['C'\]"),
    ([{"recall": "", "analyze": {"A": "a", "B": "b"}}], "rationales[0].recall", "is empty"),
    ([RATIONALE, {"analyze": {"A": "a", "B": "b"}}], "rationales[1].recall", "missing"),
])
def test_bad_teacher_records(tmp_path, rationales, field, message):
    path = write_lines(tmp_path / "teacher.jsonl", [GOOD | {"rationales": rationales}])
    with pytest.raises(DataError, match=message) as error:
        records.read_teacher_records(path)
    assert (error.value.line, error.value.field) == (1, field)


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    path = tmp_path / "out" / "rows.jsonl"
    records.write_jsonl(str(path), [{"a": 1}, {"b": "é"}])
    records.write_json(str(tmp_path / "out" / "m.json"), {"k": 1})
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json", "rows.jsonl"]
