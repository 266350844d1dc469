"""Bad data inputs, one table per reader and command: each is one `error:` line on stderr (or a DataError) that
names the file, with exit code 2, and leaves every file written before as it was."""

import gzip
import hashlib
import json
import os
import shutil

import pytest

from tinythinker_jax import cli
from tinythinker_jax.data import locations, prepare, readers, records
from tinythinker_jax.data.records import DataError
from tinythinker_jax.teacher import batch, exemplars, paper
from tinythinker_jax.teacher.cache import ResponseCache

LABELS = "ABCD"


def obqa_row(qid: str) -> dict:
    return {"id": qid, "answerKey": "B",
            "question": {"stem": f"Question {qid}?", "choices": [{"label": l, "text": f"t{l}"} for l in LABELS]}}


def csqa_row(qid: str) -> dict:
    return {**obqa_row(qid), "question": {"stem": f"Q {qid}?", "choices": [{"label": l, "text": l} for l in "ABCDE"]}}


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


GOOD_QUESTION = {"id": "q1", "question": "Pick one?", "answer": "B",
                 "options": [{"label": "A", "text": "x"}, {"label": "B", "text": "y"}]}
GOOD_TEACHER = {**GOOD_QUESTION, "rationales": [{"recall": "y fits.", "analyze": {"A": "x is not it.", "B": "y is."}}]}
GOOD_PAIR = {"id": "q1", "prompt": "p", "chosen": "c", "rejected": "r"}
GOOD_EXEMPLARS = [{"Q": "Q?", "Options": "A. x, B. y", "Key Information": "k",
                   "Explanations": ["A is incorrect. Because no.", "B is correct. Because yes."]}]

# What a bad input holds, and what the one line must say about it.
# mtime 0: the same bytes, so the same test ids, in every pytest-xdist worker whenever it collects.
BINARY = (gzip.compress(b'{"id": "q1"}\n' * 4, mtime=0), "NUL bytes")
LATIN1 = ('{"id": "caf\u00e9"}\n'.encode("latin-1"), "not UTF-8")
EMPTY = (b"", "is empty")
BLANK = (b"\n  \n", "is empty")
MISSING = (None, "not found")
DIRECTORY = ("dir", "is a directory")


def cut_jsonl(row) -> tuple[bytes, str]:
    """A file whose last line stops mid-record, as a copy cut short leaves it."""
    return jsonl([row]) + json.dumps(row).encode()[:-9], "cut off"


def cut_json(document) -> tuple[bytes, str]:
    return json.dumps(document).encode()[:-9], "cut off"


def put(path, content) -> str:
    """Writes `content` at `path`: bytes, a directory ("dir"), or nothing at all (None)."""
    path = str(path)
    if content == "dir":
        os.makedirs(path)
    elif content is not None:
        with open(path, "wb") as f:
            f.write(content)
    return path


def assert_one_line(error: Exception, path: str, message: str) -> None:
    text = str(error)
    assert "\n" not in text and text.startswith(path) and message in text, text


# ---------------------------------------------------------------------------------------------------------------
# Readers, called directly: every kind of unreadable file, in every reader.

def _read_pairs(path):
    from tinythinker_jax.reflection import data as pair_data

    return pair_data.read_pairs(path)


READERS = {
    "multiple_choice_jsonl": (lambda p: readers.read_multiple_choice_jsonl(p, 4), "jsonl", obqa_row("q1")),
    "questions": (records.read_questions, "jsonl", GOOD_QUESTION),
    "teacher_records": (records.read_teacher_records, "jsonl", GOOD_TEACHER),
    "pairs": (_read_pairs, "jsonl", GOOD_PAIR),
    "json_objects (score/generate data)": (lambda p: records.read_json_objects(p, ("inputs",)), "jsonl",
                                           {"inputs": "x"}),
    "batch_output": (lambda p: batch.import_batch(p, ResponseCache(p + ".cache")), "jsonl",
                     {"custom_id": "k", "response": {"status_code": 500}}),
    "strategyqa_json": (readers.read_strategyqa_json, "json", [{"qid": "s1", "question": "q?", "answer": True}]),
    "exemplars": (exemplars.load_exemplars, "json", GOOD_EXEMPLARS),
    "request_json": (paper.load_instruction, "json", {"Key": "Answer well."}),
}
KINDS = {
    "binary": lambda good, form: BINARY,
    "latin-1": lambda good, form: LATIN1,
    "empty": lambda good, form: EMPTY,
    "blank lines only": lambda good, form: BLANK,
    "missing": lambda good, form: MISSING,
    "directory": lambda good, form: DIRECTORY,
    "cut off": lambda good, form: cut_jsonl(good) if form == "jsonl" else cut_json(good),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_names_the_file_of_an_unreadable_input(tmp_path, reader, kind):
    read, form, good = READERS[reader]
    content, message = KINDS[kind](good, form)
    path = put(tmp_path / f"input.{form}", content)
    with pytest.raises(DataError) as error:
        read(path)
    assert error.value.path == path
    assert_one_line(error.value, path, message)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_reads_its_good_file(tmp_path, reader):
    read, form, good = READERS[reader]
    path = put(tmp_path / f"input.{form}", jsonl([good]) if form == "jsonl" else json.dumps(good).encode())
    assert read(path) is not None


def test_error_lines_carry_the_line_number(tmp_path):
    path = put(tmp_path / "q.jsonl", jsonl([GOOD_QUESTION]) + b'{"id": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not UTF-8") as error:
        records.read_questions(path)
    assert (error.value.line, str(error.value).split(": ")[0]) == (2, f"{path}:2")


def test_a_last_line_without_newline_is_read_when_whole_and_a_bad_one_is_not_called_cut_off(tmp_path):
    whole = put(tmp_path / "whole.jsonl", jsonl([GOOD_QUESTION]).rstrip(b"\n"))
    assert [q.id for q in records.read_questions(whole)] == ["q1"]
    bad = put(tmp_path / "bad.jsonl", b'{"id": x}')
    with pytest.raises(DataError, match="not valid JSON"):
        records.read_questions(bad)


def test_a_byte_order_mark_is_not_an_error(tmp_path):
    path = put(tmp_path / "q.jsonl", b"\xef\xbb\xbf" + jsonl([GOOD_QUESTION]))
    assert [q.id for q in records.read_questions(path)] == ["q1"]


def test_import_refuses_the_exported_input_file(tmp_path):
    path = put(tmp_path / "in.jsonl", jsonl([{"custom_id": "k", "method": "POST", "url": "/v1", "body": {}}]))
    with pytest.raises(DataError, match="not the input file") as error:
        batch.import_batch(path, ResponseCache(str(tmp_path / "cache.jsonl")))
    assert error.value.line == 1


# ---------------------------------------------------------------------------------------------------------------
# The teacher's response cache keeps its torn-line tolerance (a killed run), but refuses what is not a cache,
# without cutting a byte of it.

CACHE_LINE = json.dumps({"key": "k1", "response": {"choices": []}}) + "\n"


@pytest.mark.parametrize("content, line, message", [
    (BINARY[0], 1, "NUL bytes"),
    (CACHE_LINE.encode() + b"not json\n", 2, "not valid JSON"),
    (CACHE_LINE.encode() + b'{"id": "q1"}\n', 2, "cache entry"),
    (CACHE_LINE.encode() + b"some other file without a final newline", 2, "not a response cache line"),
    (b"\xff\xfe{\x00", 1, "NUL bytes"),
])
def test_cache_refuses_what_is_not_a_cache_and_leaves_it_whole(tmp_path, content, line, message):
    path = put(tmp_path / "responses.jsonl", content)
    with pytest.raises(DataError, match=message) as error:
        ResponseCache(path)
    assert (error.value.path, error.value.line) == (path, line)
    assert open(path, "rb").read() == content


def test_cache_at_a_directory_is_named(tmp_path):
    path = put(tmp_path / "cache", "dir")
    with pytest.raises(DataError, match="is a directory"):
        ResponseCache(path)


def test_cache_still_cuts_a_torn_entry(tmp_path):
    path = put(tmp_path / "responses.jsonl", CACHE_LINE.encode() + b'{"key": "k2", "resp')
    with ResponseCache(path) as cache:
        assert len(cache) == 1
    assert open(path).read() == CACHE_LINE


# ---------------------------------------------------------------------------------------------------------------
# `tinythinker data split`: a bad raw directory never touches a good dataset directory.

def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert lines and sum(line.startswith("error:") for line in lines) == 1, err
    assert lines[-1].startswith("error:"), err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def snapshot(directory: str) -> dict[str, str]:
    """Every file under `directory` (and every hidden sibling a staging step might leave) by content."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    parent = os.path.dirname(os.path.abspath(directory))
    files["<siblings>"] = sorted(n for n in os.listdir(parent) if n.startswith("."))
    return files


RAW_OBQA = {"train.jsonl": [f"tr{i}" for i in range(6)], "dev.jsonl": ["de0", "de1"], "test.jsonl": ["te0", "te1"]}


def write_raw_obqa(raw_dir: str, files=RAW_OBQA) -> str:
    os.makedirs(raw_dir, exist_ok=True)
    for name, ids in files.items():
        put(os.path.join(raw_dir, name), jsonl(obqa_row(qid) for qid in ids))
    return raw_dir


@pytest.fixture(scope="module")
def built_obqa(tmp_path_factory) -> tuple[str, str]:
    """A good raw directory and the dataset directory `data split` made of it (built once: TFDS is slow)."""
    root = tmp_path_factory.mktemp("built")
    raw = write_raw_obqa(str(root / "raw"))
    out = str(root / "obqa")
    assert cli.main(["data", "split", "--dataset", "obqa", "--raw_dir", raw, "--out_dir", out]) == 0
    return raw, out


@pytest.fixture
def good_dir(built_obqa, tmp_path) -> tuple[str, str]:
    """A private copy of the good raw and dataset directories, with teacher records of its training questions."""
    raw, out = (str(shutil.copytree(src, tmp_path / os.path.basename(src))) for src in built_obqa)
    rationale = {"recall": "A fact.", "analyze": {label: f"About {label}." for label in LABELS}}
    teacher = [{**records.question_to_json(q), "rationales": [rationale]}
               for q in records.read_questions(locations.split_path(out, "train"))]
    put(os.path.dirname(locations.teacher_path(out)), "dir")
    put(locations.teacher_path(out), jsonl(teacher))
    return raw, out


def spoil(raw: str, name: str, content) -> str:
    path = os.path.join(raw, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    return put(path, content)


SPLIT_CASES = {
    # case: (raw file to spoil, its new content, what the line says)
    "empty dev file": ("dev.jsonl", EMPTY[0], "is empty"),
    "blank test file": ("test.jsonl", BLANK[0], "is empty"),
    "binary train file": ("train.jsonl", BINARY[0], "NUL bytes"),
    "latin-1 train file": ("train.jsonl", LATIN1[0], "not UTF-8"),
    "cut-off train file": ("train.jsonl", cut_jsonl(obqa_row("tr0"))[0], "cut off"),
    "directory for dev file": ("dev.jsonl", "dir", "is a directory"),
    "missing test file": ("test.jsonl", None, "raw benchmark file not found"),
    "dev shares ids with train": ("dev.jsonl", jsonl([obqa_row("tr1"), obqa_row("tr2")]), "tr1, tr2"),
    "test shares an id with dev": ("test.jsonl", jsonl([obqa_row("de0")]), "de0"),
    "malformed line": ("dev.jsonl", b'{"id": "de0"}\n', "'question': missing"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
def test_data_split_refuses_bad_raw_files_and_leaves_the_dataset_untouched(good_dir, capsys, case):
    raw, out = good_dir
    name, content, message = SPLIT_CASES[case]
    bad = spoil(raw, name, content)
    before = snapshot(out)
    code, _, err = run_cli(capsys, "data", "split", "--dataset", "obqa", "--raw_dir", raw, "--out_dir", out)
    assert code == 2
    assert_error_line(err, bad, message)
    assert snapshot(out) == before


def reword_tr0(raw: str) -> None:
    rows = [obqa_row(qid) for qid in RAW_OBQA["train.jsonl"]]
    rows[0]["question"]["stem"] = "A corrected question?"
    put(os.path.join(raw, "train.jsonl"), jsonl(rows))


CHANGES = {
    "tr0 moves to validation": lambda raw: write_raw_obqa(
        raw, {**RAW_OBQA, "train.jsonl": RAW_OBQA["train.jsonl"][1:], "dev.jsonl": ["tr0", "de1"]}),
    "tr0 is reworded": reword_tr0,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_changed_splits_are_refused_while_teacher_records_depend_on_them(good_dir, capsys, change):
    raw, out = good_dir
    CHANGES[change](raw)
    before = snapshot(out)
    code, _, err = run_cli(capsys, "data", "split", "--dataset", "obqa", "--raw_dir", raw, "--out_dir", out)
    assert code == 2
    assert_error_line(err, locations.teacher_path(out), "take 1 of its questions out of train or change them (tr0)",
                      "--force")
    assert snapshot(out) == before


def test_force_replaces_splits_manifest_and_tfds_together_and_moves_stale_teacher_records(good_dir, capsys):
    raw, out = good_dir
    write_raw_obqa(raw, {**RAW_OBQA, "train.jsonl": RAW_OBQA["train.jsonl"][1:], "dev.jsonl": ["tr0", "de1", "de2"]})
    cache = put(os.path.join(out, "teacher", "cache.jsonl"), CACHE_LINE.encode())
    code, out_text, _ = run_cli(capsys, "data", "split", "--dataset", "obqa", "--raw_dir", raw, "--out_dir", out,
                                "--force")
    assert code == 0 and "moved to" in out_text
    manifest = json.load(open(locations.manifest_path(out)))
    assert {s: m["count"] for s, m in manifest["splits"].items()} == {"train": 5, "validation": 3, "test": 2}
    info = json.load(open(os.path.join(out, "tfds", "tinythinker_qa", "obqa", "1.0.0", "dataset_info.json")))
    assert {s["name"]: int(s["shardLengths"][0]) for s in info["splits"]} == {"train": 5, "validation": 3, "test": 2}
    assert [q.id for q in records.read_questions(locations.split_path(out, "validation"))] == ["tr0", "de1", "de2"]
    teacher_dir = os.path.dirname(locations.teacher_path(out))
    (stale,) = [n for n in os.listdir(teacher_dir) if n.startswith("stale-")]
    assert not os.path.exists(locations.teacher_path(out))
    assert len(records.read_teacher_records(os.path.join(teacher_dir, stale, "train.jsonl"))) == 6
    assert open(cache).read() == CACHE_LINE  # request-keyed, so still valid
    assert snapshot(out)["<siblings>"] == []


def test_the_same_files_and_seed_again_are_a_no_op(good_dir, capsys):
    raw, out = good_dir
    before = snapshot(out)
    mtimes = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in ("manifest.json", "train.jsonl")}
    code, out_text, _ = run_cli(capsys, "data", "split", "--dataset", "obqa", "--raw_dir", raw, "--out_dir", out)
    assert code == 0 and "unchanged" in out_text
    assert snapshot(out) == before
    assert {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in mtimes} == mtimes


def test_too_few_csqa_questions_for_the_validation_rule_writes_nothing(tmp_path, capsys):
    raw = str(tmp_path / "csqa_raw")
    os.makedirs(raw)
    train = put(os.path.join(raw, "train_rand_split.jsonl"), jsonl(csqa_row(f"t{i}") for i in range(1000)))
    put(os.path.join(raw, "dev_rand_split.jsonl"), jsonl(csqa_row(f"d{i}") for i in range(10)))
    out = str(tmp_path / "csqa")
    code, _, err = run_cli(capsys, "data", "split", "--dataset", "csqa", "--raw_dir", raw, "--out_dir", out)
    assert code == 2
    assert_error_line(err, train, "holds 1000 questions", "1221", "at least 1222")
    assert sorted(os.listdir(tmp_path)) == ["csqa_raw"]


def test_too_few_strategyqa_questions_for_the_80_10_10_rule(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    os.makedirs(raw)
    items = [{"qid": f"s{i}", "question": f"Is {i}?", "answer": bool(i % 2)} for i in range(9)]
    path = put(os.path.join(raw, "strategyqa_train.json"), json.dumps(items).encode())
    code, _, err = run_cli(capsys, "data", "split", "--dataset", "strategyqa", "--raw_dir", raw,
                           "--out_dir", str(tmp_path / "out"))
    assert code == 2
    assert_error_line(err, path, "holds 9 questions", "at least 10")
    assert not os.path.exists(tmp_path / "out")


def test_real_csqa_split_to_a_thousand_lines_is_refused(benchmark_data_dir, tmp_path, capsys):
    raw = str(tmp_path / "raw")
    os.makedirs(raw)
    with open(os.path.join(benchmark_data_dir, "csqa", "train_rand_split.jsonl"), "rb") as f:
        put(os.path.join(raw, "train_rand_split.jsonl"), b"".join(f.readlines()[:1000]))
    shutil.copy(os.path.join(benchmark_data_dir, "csqa", "dev_rand_split.jsonl"), raw)
    code, _, err = run_cli(capsys, "data", "split", "--dataset", "csqa", "--raw_dir", raw,
                           "--out_dir", str(tmp_path / "csqa"))
    assert code == 2
    assert_error_line(err, "train_rand_split.jsonl", "holds 1000 questions")
    assert not os.path.exists(tmp_path / "csqa")


def test_real_csqa_dev_questions_inside_train_are_named(benchmark_data_dir, tmp_path, capsys):
    raw = str(tmp_path / "raw")
    os.makedirs(raw)
    with open(os.path.join(benchmark_data_dir, "csqa", "dev_rand_split.jsonl"), "rb") as f:
        dev = f.readlines()
    with open(os.path.join(benchmark_data_dir, "csqa", "train_rand_split.jsonl"), "rb") as f:
        put(os.path.join(raw, "train_rand_split.jsonl"), f.read() + dev[0])
    put(os.path.join(raw, "dev_rand_split.jsonl"), b"".join(dev))
    code, _, err = run_cli(capsys, "data", "split", "--dataset", "csqa", "--raw_dir", raw,
                           "--out_dir", str(tmp_path / "csqa"))
    assert code == 2
    assert_error_line(err, "dev_rand_split.jsonl", "question ids also in", json.loads(dev[0])["id"])


@pytest.mark.parametrize("argv, needle", [
    (["--dataset", "nope"], "--dataset"),
    (["--seed", "x"], "--seed"),
])
def test_data_split_flags_are_checked_when_parsed(tmp_path, capsys, argv, needle):
    base = {"--dataset": "obqa", "--raw_dir": str(tmp_path), "--out_dir": str(tmp_path / "out")}
    base.update(dict(zip(argv[::2], argv[1::2])))
    code, _, err = run_cli(capsys, "data", "split", *[item for pair in base.items() for item in pair])
    assert code == 2
    assert_error_line(err, needle)


def test_out_dir_that_is_a_file_is_named(built_obqa, tmp_path, capsys):
    raw, _ = built_obqa
    out = put(tmp_path / "file", b"x")
    code, _, err = run_cli(capsys, "data", "split", "--dataset", "obqa", "--raw_dir", raw, "--out_dir", out)
    assert code == 2
    assert_error_line(err, out, "is a file")


def test_a_half_built_directory_is_not_taken_for_a_dataset(tmp_path):
    """What a run killed between its renames leaves (no manifest) is refused by readers and rebuilt by split."""
    out = str(tmp_path / "obqa")
    put(out, "dir")
    put(locations.split_path(out, "train"), jsonl([GOOD_QUESTION]))
    with pytest.raises(DataError, match="not prepared here"):
        prepare.ensure_prepared("obqa", out)


# ---------------------------------------------------------------------------------------------------------------
# `tinythinker data preview`: an unprepared or wrong directory, a bad task, split or vocabulary.

@pytest.fixture(autouse=True)
def default_registrations():
    """Preview registers obqa at a test directory; later tests find the default registration again."""
    yield
    import tinythinker_tasks

    tinythinker_tasks.register_dataset("obqa")


def preview(capsys, *argv) -> tuple[int, str, str]:
    return run_cli(capsys, "data", "preview", *argv)


PREVIEW_DIRECTORY_CASES = {
    # case: (dataset of the task, how the copy of the good obqa directory is spoilt, the file named, what is said)
    "unprepared": ("obqa", lambda out: os.remove(locations.manifest_path(out)), locations.manifest_path,
                   "run `tinythinker data split"),
    "another dataset's directory": ("csqa", lambda out: None, locations.manifest_path, "holds 'obqa', not 'csqa'"),
    "no TFDS build": ("obqa", lambda out: shutil.rmtree(locations.tfds_dir(out)), locations.tfds_dir,
                      "TFDS build of the splits is missing"),
    "empty manifest": ("obqa", lambda out: put(locations.manifest_path(out), b""), locations.manifest_path,
                       "is empty"),
}


@pytest.mark.parametrize("case", sorted(PREVIEW_DIRECTORY_CASES))
def test_preview_refuses_a_directory_that_is_not_this_datasets(built_obqa, tmp_path, capsys, small_vocab, case):
    dataset, spoil_dir, named, message = PREVIEW_DIRECTORY_CASES[case]
    out = str(shutil.copytree(built_obqa[1], tmp_path / "obqa"))
    spoil_dir(out)
    before = snapshot(out)
    code, _, err = preview(capsys, "--task", f"tinythinker.{dataset}.questions", "--data_dir", out, "--vocab",
                           small_vocab)
    assert code == 2
    assert_error_line(err, named(out), message)
    assert snapshot(out) == before


@pytest.mark.parametrize("task, split, needle", [
    ("csqa.recall", "train", "not a tinythinker task name"),
    ("tinythinker.nope.recall", "train", "not a tinythinker task name"),
    ("tinythinker.obqa.nope", "train", "tinythinker.obqa.questions"),
    ("tinythinker.obqa.analyze", "test", "--split test"),
])
def test_preview_task_and_split_mistakes(built_obqa, capsys, small_vocab, task, split, needle):
    _, out = built_obqa
    code, _, err = preview(capsys, "--task", task, "--split", split, "--data_dir", out, "--vocab", small_vocab)
    assert code == 2
    assert_error_line(err, needle)


@pytest.mark.parametrize("flags, needle", [(["--num", "0"], "--num"), (["--split", "dev"], "--split")])
def test_preview_flags_are_checked_when_parsed(capsys, flags, needle):
    code, _, err = preview(capsys, "--task", "tinythinker.obqa.questions", *flags)
    assert code == 2
    assert_error_line(err, needle)


@pytest.mark.parametrize("teacher_content, message", [(None, "teacher records not found"), (EMPTY[0], "is empty"),
                                                      (BINARY[0], "NUL bytes"), (DIRECTORY[0], "is a directory")])
def test_preview_of_a_stage_names_the_teacher_file(built_obqa, tmp_path, capsys, small_vocab, teacher_content,
                                                   message):
    _, built = built_obqa
    out = str(shutil.copytree(built, tmp_path / "obqa"))
    teacher = locations.teacher_path(out)
    put(os.path.dirname(teacher), "dir")
    put(teacher, teacher_content)
    code, _, err = preview(capsys, "--task", "tinythinker.obqa.recall", "--data_dir", out, "--vocab", small_vocab)
    assert code == 2
    assert_error_line(err, teacher, message)


VOCABULARY_CASES = {
    # case: (--vocab, TINYTHINKER_VOCABULARY, default URL, what the line says)
    "--vocab missing": ("{tmp}/missing.model", None, None, "vocabulary file not found"),
    "--vocab a directory": ("{tmp}", None, None, "is a directory"),
    "--vocab not a model": ("{tmp}/bad.model", None, None, "is not a SentencePiece model"),
    "env var missing": (None, "{tmp}/missing.model", None, "vocabulary file not found"),
    "default URL unreadable": (None, None, "nofs://t5-data/sentencepiece.model", "cannot be read"),
}


@pytest.mark.parametrize("case", sorted(VOCABULARY_CASES))
def test_preview_says_which_vocabulary_and_how_to_pass_a_local_one(built_obqa, tmp_path, capsys, monkeypatch,
                                                                   case):
    """Offline, T5's gs:// vocabulary fails as an unknown file system does: with one line, not libcurl's."""
    flag, env, url, message = VOCABULARY_CASES[case]
    put(tmp_path / "bad.model", b'{"not": "a model"}')
    monkeypatch.delenv(locations.VOCABULARY_ENV, raising=False)
    if env:
        monkeypatch.setenv(locations.VOCABULARY_ENV, env.format(tmp=tmp_path))
    if url:
        monkeypatch.setattr(locations, "T5_VOCABULARY", url)
    _, out = built_obqa
    argv = ["--task", "tinythinker.obqa.questions", "--data_dir", out] + (
        ["--vocab", flag.format(tmp=tmp_path)] if flag else [])
    code, _, err = preview(capsys, *argv)
    assert code == 2
    named = (flag or env or url).format(tmp=tmp_path)
    assert_error_line(err, named, message, "--vocab FILE", "VOCABULARY_PATH", locations.VOCABULARY_ENV,
                      "sentencepiece.model")


def test_the_environment_variable_sets_every_commands_default_vocabulary(built_obqa, capsys, monkeypatch, small_vocab):
    monkeypatch.setenv(locations.VOCABULARY_ENV, small_vocab)
    assert locations.default_vocabulary("csqa", "/any") == small_vocab
    assert locations.default_vocabulary("toyworld", "/d") == locations.toy_vocabulary_path("/d")
    _, out = built_obqa
    code, text, err = preview(capsys, "--task", "tinythinker.obqa.questions", "--data_dir", out, "--num", "1")
    assert code == 0, err
    assert "Question " in text


# ---------------------------------------------------------------------------------------------------------------
# `tinythinker teacher run|export-batch|import-batch`: their input files, before any request is sent.

@pytest.fixture
def teacher_dir(tmp_path) -> str:
    split_dir = str(tmp_path / "data")
    put(split_dir, "dir")
    put(locations.split_path(split_dir, "train"),
        jsonl({**GOOD_QUESTION, "id": f"q{i}", "options": [{"label": l, "text": l.lower()} for l in LABELS]}
              for i in range(2)))
    return split_dir


TEACHER_CASES = {
    # case: (subcommand, the input to spoil: a flag or "split", its content, what the line says)
    "run: binary question file": ("run", "split", BINARY[0], "NUL bytes"),
    "run: empty question file": ("run", "split", EMPTY[0], "is empty"),
    "run: cut-off question file": ("run", "split", cut_jsonl(GOOD_QUESTION)[0], "cut off"),
    "run: question file a directory": ("run", "split", "dir", "is a directory"),
    "run: exemplars binary": ("run", "--exemplars", BINARY[0], "NUL bytes"),
    "run: exemplars cut off": ("run", "--exemplars", cut_json(GOOD_EXEMPLARS)[0], "cut off"),
    "run: exemplars missing": ("run", "--exemplars", None, "not found"),
    "run: request file empty": ("run", "--request_file", EMPTY[0], "is empty"),
    "run: cache not a cache": ("run", "--cache", b"some notes\n", "not valid JSON"),
    "run: cache a directory": ("run", "--cache", "dir", "is a directory"),
    "export-batch: batch file a directory": ("export-batch", "--batch_file", "dir", "is a directory"),
    "export-batch: question file binary": ("export-batch", "split", BINARY[0], "NUL bytes"),
    "import-batch: output empty": ("import-batch", "--batch_output", EMPTY[0], "is empty"),
    "import-batch: output binary": ("import-batch", "--batch_output", BINARY[0], "NUL bytes"),
    "import-batch: output cut off": ("import-batch", "--batch_output",
                                     cut_jsonl({"custom_id": "k", "response": {"status_code": 500}})[0], "cut off"),
    "import-batch: output missing": ("import-batch", "--batch_output", None, "not found"),
    "import-batch: the input file": ("import-batch", "--batch_output",
                                     jsonl([{"custom_id": "k", "method": "POST", "url": "/v1", "body": {}}]),
                                     "not the input file"),
}


@pytest.mark.parametrize("case", sorted(TEACHER_CASES))
def test_teacher_input_files(teacher_dir, tmp_path, capsys, case):
    command, target, content, message = TEACHER_CASES[case]
    out_dir = str(tmp_path / "teacher")
    cache = put(tmp_path / "cache.jsonl", CACHE_LINE.encode())
    flags = {"--dataset": "obqa", "--split_dir": teacher_dir, "--out_dir": out_dir, "--cache": cache,
             "--base_url": "http://127.0.0.1:9/v1", "--samples": "1"}
    if command == "import-batch":
        flags["--batch_output"] = put(tmp_path / "output.jsonl", jsonl([{"custom_id": "k", "error": {"code": "x"}}]))
    if command == "export-batch":
        flags["--batch_file"] = str(tmp_path / "batch.jsonl")
    if target == "--request_file":
        flags.update({"--prompt_mode": "paper", "--exemplars": put(tmp_path / "ex.json", json.dumps(GOOD_EXEMPLARS)
                                                                   .encode())})
    if target == "split":
        bad = locations.split_path(teacher_dir, "train")
        os.remove(bad)
    else:
        bad = str(tmp_path / f"spoilt{target}")
        flags[target] = bad
    put(bad, content)
    before = snapshot(str(tmp_path))
    code, _, err = run_cli(capsys, "teacher", command, *[item for pair in flags.items() for item in pair])
    assert code == 2
    assert_error_line(err, bad, message)
    assert snapshot(str(tmp_path)) == before


def test_a_vocabulary_larger_than_the_embedding_is_one_line(prepared_toyworld):
    import tinythinker_tasks
    from tinythinker_jax.errors import UserError
    from tinythinker_jax.models import t5
    from tinythinker_jax.phases import setup

    try:
        with pytest.raises(UserError, match=r"spiece.model \(VOCABULARY_PATH\) has 700 ids but the model embeds "
                                            r"only 100: raise t5.model_config.vocab_size"):
            setup.setup_data("tinythinker.toyworld.full_stages", prepared_toyworld, None,
                               t5.model_config("t5_1_0_tiny", vocab_size=100))
    finally:
        tinythinker_tasks.register_dataset("toyworld")
