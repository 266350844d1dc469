"""Every seqio task and mixture iterates to numpy batches through seqio.EncDecFeatureConverter."""

import json
import os
import shutil

import numpy as np
import pytest
import seqio

import tinythinker_tasks
from tinythinker_jax import formats
from tinythinker_jax.data import locations, prepare
from tinythinker_jax.data.records import (
    Rationale,
    TeacherRecord,
    question_to_json,
    read_questions,
    teacher_record_to_json,
    write_jsonl,
)

LENGTHS = {"inputs": 256, "targets": 64}


def task_names(dataset):
    names = [tinythinker_tasks.questions_task_name(dataset)]
    for stage_type, stages in formats.STAGE_TYPES.items():
        names += [tinythinker_tasks.stage_task_name(dataset, stage, stage_type) for stage in stages]
        names.append(tinythinker_tasks.stage_mixture_name(dataset, stage_type))
    return names


def first_batch(name, split):
    dataset = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length=LENGTHS, split=split, shuffle=False, seed=0)
    converted = seqio.EncDecFeatureConverter(pack=False)(dataset, LENGTHS)
    return next(converted.batch(4).as_numpy_iterator())


def check_batch(batch):
    assert batch["encoder_input_tokens"].shape == (4, LENGTHS["inputs"])
    assert batch["decoder_target_tokens"].shape == (4, LENGTHS["targets"])
    # Every row ends its target with EOS (id 1) inside the length and starts decoding from 0.
    assert np.all((batch["decoder_target_tokens"] == 1).sum(axis=1) == 1)
    assert np.all(batch["decoder_input_tokens"][:, 0] == 0)
    assert np.all(batch["decoder_loss_weights"].sum(axis=1) > 1)


@pytest.fixture(scope="module")
def toy_dir(prepared_toyworld):
    tinythinker_tasks.register_dataset("toyworld", prepared_toyworld)
    yield prepared_toyworld
    tinythinker_tasks.register_dataset("toyworld")


def test_every_toyworld_task_yields_batches(toy_dir):
    for name in task_names("toyworld"):
        split = "validation" if name.endswith(".questions") else "train"
        check_batch(first_batch(name, split))


def test_stage_task_strings_come_from_the_teacher_records(toy_dir):
    task = seqio.get_mixture_or_task("tinythinker.toyworld.summarize")
    example = next(task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
    record = json.loads(open(locations.teacher_path(toy_dir)).readline())
    assert example["id"].decode() == record["id"]
    assert example["inputs_pretokenized"].decode().endswith("\nSummarize:")
    assert example["targets_pretokenized"].decode() == formats.summary_target(record["answer"])
    vocabulary = task.output_features["targets"].vocabulary
    assert vocabulary.decode(example["targets"][:-1].tolist()) == formats.summary_target(record["answer"])


def test_questions_task_keeps_every_split_and_scores_summaries(toy_dir):
    task = seqio.get_mixture_or_task("tinythinker.toyworld.questions")
    for split in ("train", "validation", "test"):
        expected = {q.id: q for q in read_questions(locations.split_path(toy_dir, split))}
        rows = list(task.get_dataset(sequence_length=None, split=split, shuffle=False).as_numpy_iterator())
        assert {row["id"].decode() for row in rows} == set(expected)
        row = rows[0]
        question = expected[row["id"].decode()]
        assert row["inputs_pretokenized"].decode() == formats.recall_input(question)
        assert row["targets_pretokenized"].decode() == formats.summary_target(question.answer)
    (metric,) = task.metric_fns
    targets = ["So the answer is option A.", "So the answer is option B.", "So the answer is option C."]
    assert metric(targets, ["So the answer is option A.", "the answer is option B.", "option C"]) == {
        "accuracy": pytest.approx(200 / 3)}


def test_missing_teacher_records_are_reported(tmp_path, small_vocab):
    tinythinker_tasks.register_dataset("obqa", str(tmp_path), small_vocab)
    try:
        with pytest.raises(Exception, match="teacher records not found"):
            first_batch("tinythinker.obqa.recall", "train")
    finally:
        tinythinker_tasks.register_dataset("obqa")


def test_task_names_map_to_datasets():
    assert tinythinker_tasks.dataset_of_task("tinythinker.csqa.analyze_summarize.analyze") == "csqa"
    with pytest.raises(ValueError, match="not a tinythinker task"):
        tinythinker_tasks.dataset_of_task("tinythinker.squad.recall")


@pytest.mark.parametrize("dataset", ["csqa", "obqa", "strategyqa"])
def test_benchmark_tasks_on_real_files(benchmark_data_dir, tmp_path, dataset):
    data_dir = str(tmp_path / dataset)
    prepare.prepare_benchmark(dataset, os.path.join(benchmark_data_dir, dataset), data_dir)
    # Hand-made rationales for a few training questions stand in for a teacher run.
    records = [
        TeacherRecord(q, (Rationale(f"Fact {i} about {q.question[:20]}",
                                    {label: f"option {label} checked" for label in q.labels}),))
        for i, q in enumerate(read_questions(locations.split_path(data_dir, "train"))[:8])
    ]
    write_jsonl(locations.teacher_path(data_dir), map(teacher_record_to_json, records))
    vocabulary = os.path.join(os.path.dirname(benchmark_data_dir.rstrip("/")), "vocab", "t5_spiece.model")
    tinythinker_tasks.register_dataset(dataset, data_dir, vocabulary)
    try:
        for name in task_names(dataset):
            check_batch(first_batch(name, "test" if name.endswith(".questions") else "train"))
    finally:
        tinythinker_tasks.register_dataset(dataset)


def test_teacher_run_output_feeds_the_stage_tasks(prepared_toyworld, tmp_path):
    """A real teacher run against a local OpenAI-compatible server, then the seqio stage tasks read its records."""
    from tinythinker_jax import cli
    from tinythinker_jax.teacher.fake_server import ScriptedServer

    data_dir = tmp_path / "toyworld"
    shutil.copytree(prepared_toyworld, data_dir, ignore=shutil.ignore_patterns("teacher"))
    train = read_questions(locations.split_path(str(data_dir), "train"))
    write_jsonl(locations.split_path(str(data_dir), "train"), map(question_to_json, train[:6]))
    with ScriptedServer() as server:
        assert cli.main(["teacher", "run", "--dataset", "toyworld", "--split_dir", str(data_dir), "--base_url",
                         server.base_url, "--model", "local", "--samples", "2", "--no-progress"]) == 0
    tinythinker_tasks.register_dataset("toyworld", str(data_dir))
    try:
        rows = list(seqio.get_mixture_or_task("tinythinker.toyworld.analyze").get_dataset(
            sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
        assert len(rows) == 6 * 2 * 5  # questions x samples x options, all distinct
        assert rows[0]["targets_pretokenized"].decode().startswith("reason ")
        for stage in formats.STAGE_TYPES["full"]:
            check_batch(first_batch(tinythinker_tasks.stage_task_name("toyworld", stage), "train"))
    finally:
        tinythinker_tasks.register_dataset("toyworld")
