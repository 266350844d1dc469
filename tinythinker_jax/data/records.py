"""The record types every part of the system shares, and their JSONL form.

A question record is `{"id", "question", "options": [{"label", "text"}], "answer", "facts"}`.
A teacher record is a question record plus `"rationales": [{"recall": str, "analyze": {label: str}}]`,
one rationale per teacher sample. Validation and test files hold question records only.
"""

import dataclasses
import json
import os
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Sequence

from tinythinker_jax.errors import UserError


class DataError(UserError, ValueError):
    """Bad input, located by file, line and field so a user can fix it."""

    def __init__(self, path: str, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field = path, line, field
        where = path if line is None else f"{path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


@dataclasses.dataclass(frozen=True)
class Option:
    label: str
    text: str


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    question: str
    options: tuple[Option, ...]
    answer: str
    facts: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(option.label for option in self.options)


@dataclasses.dataclass(frozen=True)
class Rationale:
    recall: str
    analyze: Mapping[str, str]  # option label -> explanation for that option


@dataclasses.dataclass(frozen=True)
class TeacherRecord:
    question: Question
    rationales: tuple[Rationale, ...]


def question_to_json(question: Question) -> dict[str, Any]:
    return {
        "id": question.id,
        "question": question.question,
        "options": [{"label": o.label, "text": o.text} for o in question.options],
        "answer": question.answer,
        "facts": list(question.facts),
    }


def teacher_record_to_json(record: TeacherRecord) -> dict[str, Any]:
    return {
        **question_to_json(record.question),
        "rationales": [{"recall": r.recall, "analyze": dict(r.analyze)} for r in record.rationales],
    }


class JsonFields:
    """Typed access to one JSON object's fields, raising DataError with the location."""

    def __init__(self, obj: Any, path: str, line: int | None, prefix: str = ""):
        if not isinstance(obj, dict):
            raise DataError(path, line, prefix or None, f"expected a JSON object, got {type(obj).__name__}")
        self.obj, self.path, self.line, self.prefix = obj, path, line, prefix

    def where(self) -> str:
        return self.prefix if self.line is None else f"line {self.line}"

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str) -> DataError:
        return DataError(self.path, self.line, self.name(key), message)

    def get(self, key: str, kind: type, *, optional: bool = False, default: Any = None) -> Any:
        if key not in self.obj:
            if optional:
                return default
            raise self.error(key, "missing")
        value = self.obj[key]
        if kind is str and not isinstance(value, str):
            raise self.error(key, f"expected a string, got {json.dumps(value)[:60]}")
        if kind is str and not value.strip():
            raise self.error(key, "is empty")
        if kind is list and not isinstance(value, list):
            raise self.error(key, f"expected a list, got {type(value).__name__}")
        if kind is dict and not isinstance(value, dict):
            raise self.error(key, f"expected an object, got {type(value).__name__}")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise self.error(key, f"expected a number, got {json.dumps(value)[:60]}")
        if kind is bool and not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {json.dumps(value)[:60]}")
        return value

    def child(self, key: str, index: int | None = None) -> "JsonFields":
        value = self.obj[key] if index is None else self.obj[key][index]
        name = self.name(key) if index is None else f"{self.name(key)}[{index}]"
        return JsonFields(value, self.path, self.line, name)


def make_question(
    id: str, question: str, options: Sequence[tuple[str, str]], answer: str, facts: Sequence[str] = (),
    *, path: str = "<memory>", line: int | None = None, options_field: str = "options", answer_field: str = "answer",
) -> Question:
    """Builds a Question and checks what every consumer relies on; errors use the file's own field names."""
    labels = [label for label, _ in options]
    if len(options) < 2:
        raise DataError(path, line, options_field, f"needs at least two options, got {len(options)}")
    for label, text in options:
        if len(label) != 1 or not ("A" <= label <= "Z"):
            raise DataError(path, line, options_field, f"label {label!r} is not a single capital letter")
        if not text.strip():
            raise DataError(path, line, options_field, f"option {label} has empty text")
    if labels != sorted(labels) or len(set(labels)) != len(labels):
        raise DataError(path, line, options_field, f"labels {labels} are not distinct and in order")
    if answer not in labels:
        raise DataError(path, line, answer_field, f"{answer!r} is not one of the labels {labels}")
    return Question(
        id=id, question=question.strip(),
        options=tuple(Option(label, text.strip()) for label, text in options),
        answer=answer, facts=tuple(facts),
    )


def _question_from_fields(fields: JsonFields) -> Question:
    options = []
    for index, _ in enumerate(fields.get("options", list)):
        option = fields.child("options", index)
        options.append((option.get("label", str), option.get("text", str)))
    facts = fields.get("facts", list, optional=True, default=[])
    return make_question(
        fields.get("id", str), fields.get("question", str), options, fields.get("answer", str),
        [str(f) for f in facts], path=fields.path, line=fields.line,
    )


def _rationale_from_fields(fields: JsonFields, labels: Sequence[str]) -> Rationale:
    analyze = fields.get("analyze", dict)
    for label in labels:
        if label not in analyze:
            raise fields.error(f"analyze.{label}", "missing: every option needs an analysis")
    texts = {}
    for label in labels:
        text = analyze[label]
        if not isinstance(text, str) or not text.strip():
            raise fields.error(f"analyze.{label}", "expected a non-empty string")
        texts[label] = text
    extra = sorted(set(analyze) - set(labels))
    if extra:
        raise fields.error("analyze", f"labels {extra} are not options of this question")
    return Rationale(recall=fields.get("recall", str), analyze=texts)


def _check_is_file(path: str) -> None:
    if os.path.isdir(path):
        raise DataError(path, None, None, "is a directory; expected a file")
    if not os.path.exists(path):
        raise DataError(path, None, None, "not found")


def open_binary(path: str) -> BinaryIO:
    """Opens an input file for reading, or raises DataError saying why it cannot be read (missing, a directory,
    no permission), so no reader shows a traceback for a wrong path."""
    _check_is_file(path)
    try:
        return open(path, "rb")
    except OSError as e:
        raise DataError(path, None, None, f"cannot be read ({e.strerror})") from None


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode_text(path: str, data: bytes, first_line: int = 1) -> str:
    """`data` as UTF-8 text (a leading byte-order mark dropped), or a DataError at the line of the first bad byte.

    A NUL byte or undecodable bytes mean a binary file (compressed, a model, a TFRecord), not text.
    """
    if b"\x00" in data:
        line = first_line + _line_of(data, data.index(b"\x00")) - 1
        raise DataError(path, line, None, "holds NUL bytes: a binary (or UTF-16) file, not UTF-8 text; "
                                          "uncompress it or save it as UTF-8")
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as e:
        line = first_line + _line_of(data, e.start) - 1
        raise DataError(path, line, None, f"is not UTF-8 text (byte 0x{data[e.start]:02x}); "
                                          f"save the file as UTF-8") from None


def read_text(path: str) -> str:
    """The whole of a text file, checked as `open_binary` and `decode_text` check it."""
    with open_binary(path) as f:
        return decode_text(path, f.read())


def _ends_early(error: json.JSONDecodeError, text: str) -> bool:
    """Whether JSON text broke off rather than went wrong: a string never closed (strict JSON strings
    cannot span lines), or more expected where the text ends."""
    return error.msg.startswith("Unterminated string") or error.pos >= len(text.rstrip())


def load_json(path: str) -> Any:
    """One JSON document (a list or an object), with a DataError for an empty, cut-off or malformed file."""
    text = read_text(path)
    if not text.strip():
        raise DataError(path, None, None, "is empty; expected a JSON document")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if _ends_early(e, text):
            raise DataError(path, e.lineno, None, "the JSON document ends too early: the file is cut off "
                                                  "(copied or written incompletely?)") from None
        raise DataError(path, e.lineno, None, f"not valid JSON ({e.msg} at column {e.colno})") from None


def iter_json_lines(path: str, *, allow_empty: bool = True) -> Iterator[tuple[int, Any]]:
    """Yields (line number, parsed object) for each non-blank line of a JSONL file.

    Every problem is a DataError naming the file (and line): a missing file or a directory, binary or
    non-UTF-8 bytes, a line that is not JSON, a last line cut off mid-record, and, unless `allow_empty`,
    a file without a single record.
    """
    found = False
    with open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            text = decode_text(path, raw, first_line=number)
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                if not raw.endswith(b"\n") and _ends_early(e, text):
                    raise DataError(path, number, None, "the last line is cut off mid-record (was the file copied "
                                                        "or written incompletely?)") from None
                raise DataError(path, number, None, f"not valid JSON ({e.msg} at column {e.colno})") from None
            found = True
            yield number, obj
    if not found and not allow_empty:
        raise DataError(path, None, None, "is empty; expected JSON lines, one record per line")


def read_json_objects(path: str, string_fields: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, at least one, each with `string_fields` as strings (empty allowed).

    Args:
        path: the JSONL file.
        string_fields: fields every line must carry as a JSON string.

    Returns:
        The objects, in file order.

    Raises:
        DataError: naming the file, line and field of the first problem (see `iter_json_lines`).
    """
    rows = []
    for line, obj in iter_json_lines(path, allow_empty=False):
        fields = JsonFields(obj, path, line)
        for field in string_fields:
            if not isinstance(obj.get(field), str):
                raise fields.error(field, "missing or not a string")
        rows.append(obj)
    return rows


def check_unique_ids(located: Iterable[tuple["JsonFields", Question]], id_field: str = "id") -> None:
    """Duplicate ids would silently merge two questions downstream, so they are an input error."""
    seen: dict[str, str] = {}
    for fields, question in located:
        if question.id in seen:
            raise fields.error(id_field, f"duplicate id {question.id!r} (first at {seen[question.id]})")
        seen[question.id] = fields.where()


def read_questions(path: str) -> list[Question]:
    """Reads a question-record JSONL file (rationales, if present, are ignored)."""
    located = []
    for line, obj in iter_json_lines(path, allow_empty=False):
        fields = JsonFields(obj, path, line)
        located.append((fields, _question_from_fields(fields)))
    check_unique_ids(located)
    return [q for _, q in located]


def read_teacher_records(path: str) -> list[TeacherRecord]:
    """Reads a teacher-record JSONL file; every record must carry at least one rationale."""
    records, located = [], []
    for line, obj in iter_json_lines(path, allow_empty=False):
        fields = JsonFields(obj, path, line)
        question = _question_from_fields(fields)
        items = fields.get("rationales", list)
        if not items:
            raise fields.error("rationales", "is empty: a teacher record needs at least one rationale")
        rationales = tuple(
            _rationale_from_fields(fields.child("rationales", i), question.labels) for i in range(len(items))
        )
        located.append((fields, question))
        records.append(TeacherRecord(question, rationales))
    check_unique_ids(located)
    return records


def json_line(row: Mapping[str, Any]) -> str:
    """One JSONL line, as every writer of this project writes it."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def _check_writable(path: str) -> None:
    if os.path.isdir(path):
        raise DataError(path, None, None, "is a directory; expected the path of a file to write")


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Writes rows atomically: readers see the old file or the whole new one, never a torn one."""
    _check_writable(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:  # rows may be a generator that fails half-way: no temporary file is left behind
                f.write(json_line(row))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
    """Writes one JSON document atomically."""
    _check_writable(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
