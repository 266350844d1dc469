"""Upstream-format readers, their errors, and the paper's splits (sizes, determinism, manifest)."""

import json
import os

import pytest

from tinythinker_jax.data import benchmarks, readers
from tinythinker_jax.data.records import DataError, read_questions


def csqa_line(qid, answer="B", labels="ABCDE", **overrides):
    row = {"id": qid, "answerKey": answer,
           "question": {"stem": f"Question {qid}?", "question_concept": "c",
                        "choices": [{"label": label, "text": f"text {label}"} for label in labels]}}
    return json.dumps({**row, **overrides})


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_multiple_choice_reader_sorts_choices_into_label_order(tmp_path):
    line = json.loads(csqa_line("q1", "C", "ABCD"))
    line["question"]["choices"].reverse()
    (question,) = readers.read_multiple_choice_jsonl(write(tmp_path / "obqa.jsonl", [json.dumps(line)]), 4)
    assert question.labels == ("A", "B", "C", "D")
    assert question.options[2].text == "text C" and question.answer == "C"
    assert question.question == "Question q1?"


def test_strategyqa_reader_casts_yes_no(tmp_path):
    items = [{"qid": "s1", "question": "Is it?", "answer": True, "facts": ["f1", "f2"]},
             {"qid": "s2", "question": "Is it not?", "answer": False}]
    path = tmp_path / "strategyqa_train.json"
    path.write_text(json.dumps(items))
    yes, no = readers.read_strategyqa_json(str(path))
    assert [(o.label, o.text) for o in yes.options] == [("A", "yes"), ("B", "no")]
    assert (yes.answer, yes.facts, no.answer, no.facts) == ("A", ("f1", "f2"), "B", ())


@pytest.mark.parametrize("bad_line, field, message", [
    (csqa_line("q2", "F"), "answerKey", "not one of the labels"),
    (csqa_line("q2", labels="ABCD"), "question.choices", "expected 5 options, got 4"),
    (csqa_line("q1"), "id", "duplicate id"),
    (json.dumps({"id": "q2", "answerKey": "A"}), "question", "missing"),
    (csqa_line("q2", question={"stem": "s?", "choices": [{"label": "A"}] * 5}), "question.choices[0].text", "missing"),
    ("{not json", None, "not valid JSON"),
])
def test_multiple_choice_reader_errors(tmp_path, bad_line, field, message):
    path = write(tmp_path / "train_rand_split.jsonl", [csqa_line("q1"), bad_line])
    with pytest.raises(DataError, match=message) as error:
        readers.read_multiple_choice_jsonl(path, 5)
    assert (error.value.path, error.value.line, error.value.field) == (path, 2, field)


@pytest.mark.parametrize("items, field, message", [
    ([{"qid": "s1", "question": "q?", "answer": "yes"}], "[0].answer", "expected true or false"),
    ([{"qid": "s1", "question": "q?"}], "[0].answer", "missing"),
    ([{"qid": "s1", "question": "q?", "answer": True}, {"qid": "s1", "question": "r?", "answer": False}],
     "[1].qid", "duplicate id"),
])
def test_strategyqa_reader_errors(tmp_path, items, field, message):
    path = tmp_path / "strategyqa_train.json"
    path.write_text(json.dumps(items))
    with pytest.raises(DataError, match=message) as error:
        readers.read_strategyqa_json(str(path))
    assert error.value.field == field


def test_missing_raw_file_is_named(tmp_path):
    with pytest.raises(DataError, match="raw benchmark file not found") as error:
        benchmarks.write_splits("obqa", str(tmp_path), str(tmp_path / "out"))
    assert error.value.path == os.path.join(str(tmp_path), "train.jsonl")


def test_csqa_split_rule_on_a_small_file(tmp_path):
    write(tmp_path / "train_rand_split.jsonl", [csqa_line(f"t{i}") for i in range(1300)])
    write(tmp_path / "dev_rand_split.jsonl", [csqa_line(f"d{i}") for i in range(10)])
    splits = benchmarks.get_benchmark("csqa").make_splits(str(tmp_path), 0)
    assert [len(splits[s]) for s in benchmarks.SPLITS] == [79, 1221, 10]
    assert not {q.id for q in splits["train"]} & {q.id for q in splits["validation"]}
    other_seed = benchmarks.get_benchmark("csqa").make_splits(str(tmp_path), 1)
    assert {q.id for q in other_seed["validation"]} != {q.id for q in splits["validation"]}


# Split membership and order, pinned: the same on every machine and every run.
EXPECTED_SPLITS = {
    "csqa": {"train": (8520, "fa87799d9ca20bb4393b3b1b939a29be0fd321facf1f067267cd69c4462c1eb4"),
             "validation": (1221, "1ebe0e11fdfb8d99571196b27a0f82792f7d52eaea28bb623bf33e8080c1d2c3"),
             "test": (1221, "e1178440e18674a3576c9172183da187bcca86776c1ca8630b7083f22e6d6395")},
    "obqa": {"train": (4957, "55ef269bbf1e483072f4bf9f59f570130af856cfd17255c9d754db6f592b434d"),
             "validation": (500, "010dc2e36f436acf502c4ec1562cc7e1d7afe03dd1a99c34bba65b24981430b8"),
             "test": (500, "291a3281a7d8ab983e27b611cfecef32e74bb564bc0986b253fd52ed1f5e769f")},
    "strategyqa": {"train": (1648, "5396a7f0700e9a6465a2bb6d741ee84f243748ea565edf23b49c3081577512c2"),
                   "validation": (206, "fae49f16a7d97aee38f52540fc10dc4b8306a533b8702ad27456d40475b60981"),
                   "test": (206, "a387593d16987906ef0a8cb206ccc98de9614a94e81fae187f4bab3625521132")},
}


@pytest.mark.parametrize("dataset", sorted(EXPECTED_SPLITS))
def test_real_splits_are_pinned_and_written_with_a_manifest(benchmark_data_dir, tmp_path, dataset):
    raw_dir = os.path.join(benchmark_data_dir, dataset)
    manifest = benchmarks.write_splits(dataset, raw_dir, str(tmp_path))
    expected = EXPECTED_SPLITS[dataset]
    assert {s: (m["count"], m["ids_sha256"]) for s, m in manifest["splits"].items()} == expected
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    written = {s: read_questions(str(tmp_path / f"{s}.jsonl")) for s in benchmarks.SPLITS}
    assert {s: benchmarks.ids_digest(q) for s, q in written.items()} == {s: d for s, (_, d) in expected.items()}
    num_options = benchmarks.get_benchmark(dataset).num_options
    assert all(len(q.options) == num_options and q.answer in q.labels for qs in written.values() for q in qs)
    ids = [q.id for qs in written.values() for q in qs]
    assert len(ids) == len(set(ids))


def test_real_readers_keep_structure(benchmark_data_dir):
    csqa = readers.read_multiple_choice_jsonl(os.path.join(benchmark_data_dir, "csqa", "dev_rand_split.jsonl"), 5)
    first = csqa[0]
    assert first.id == "1afa02df02c908a558b4036e80242fac" and first.answer == "A"
    assert [o.text for o in first.options] == ["bank", "library", "department store", "mall", "new york"]
    strategyqa = readers.read_strategyqa_json(os.path.join(benchmark_data_dir, "strategyqa", "strategyqa_train.json"))
    assert len(strategyqa) == 2060 and all(q.facts for q in strategyqa)
    assert {q.answer for q in strategyqa} == {"A", "B"}
