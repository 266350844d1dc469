"""SeqIO tasks and mixtures of tinythinker-jax, installed as `tinythinker_tasks`.

For every dataset (csqa, obqa, strategyqa, toyworld and its variants), `register_dataset` adds:

    tinythinker.<dataset>.recall | .analyze | .summarize      full three-stage training examples
    tinythinker.<dataset>.<stage_type>.<stage>                ablation stage types (summarize,
                                                              recall_summarize, analyze_summarize)
    tinythinker.<dataset>.<stage_type>_stages                 a mixture of one stage type's tasks
    tinythinker.<dataset>.questions                           the questions of every split: recall
                                                              prompt -> gold summary, for evaluation

and `register_pair_task` adds the self-reflection pair files of one iteration, e.g.

    tinythinker.<dataset>.reflect_<iteration>.<stage>_pairs   prompt -> chosen and rejected targets

Stage tasks read the teacher records (JSONL) of the training split; the question task reads the
TFDS build of the splits. Importing this module registers every dataset at its default location
(see `tinythinker_jax.data.locations`); call `register_dataset` again, from code or gin, to point
a dataset at another directory or vocabulary.
"""

import functools
import os

import numpy as np
import seqio
import tensorflow as tf
from google.protobuf import message as protobuf_message

from tinythinker_jax import formats
from tinythinker_jax.data import benchmarks, examples, locations, records, tfds_builder
from tinythinker_jax.errors import UserError

# The input pipeline is host-side work; an accelerator belongs to JAX alone.
tf.config.set_visible_devices([], "GPU")

QUESTIONS = "questions"


class TaskNameError(UserError, ValueError):
    """A name that is not one of this project's tasks or mixtures."""


class Vocabulary(seqio.SentencePieceVocabulary):
    """seqio's SentencePiece vocabulary, with T5's extra ids, whose loading fails with one line that says which
    file could not be read and how to give another, instead of a libcurl or protobuf traceback.

    Load it in Python (`load_model`, `vocab_size`) before a dataset uses it: inside a tf.data function,
    TensorFlow wraps any error in a StagingError traceback.
    """

    def __init__(self, path: str):
        super().__init__(path, extra_ids=locations.EXTRA_IDS)

    def _model_context(self):
        if self._model:  # loaded: this runs on every tokenizer access
            return self._model
        path = self.sentencepiece_model_file
        locations.check_local_vocabulary(path)
        try:
            return super()._model_context()
        except tf.errors.OpError as e:
            first_line = (str(e.message).strip().splitlines() or [type(e).__name__])[0]
            raise locations.VocabularyError(path, f"cannot be read ({first_line})") from None
        except (protobuf_message.DecodeError, RuntimeError) as e:
            raise locations.VocabularyError(path, f"is not a SentencePiece model ({type(e).__name__})") from None


def stage_task_name(dataset: str, stage: str, stage_type: str = "full") -> str:
    if stage_type == "full":
        return f"tinythinker.{dataset}.{stage}"
    return f"tinythinker.{dataset}.{stage_type}.{stage}"


def stage_mixture_name(dataset: str, stage_type: str) -> str:
    return f"tinythinker.{dataset}.{stage_type}_stages"


def questions_task_name(dataset: str) -> str:
    return f"tinythinker.{dataset}.{QUESTIONS}"


def pair_task_name(dataset: str, iteration: int, stage: str, scored: bool) -> str:
    return f"tinythinker.{dataset}.reflect_{iteration}.{stage}_pairs{'_scored' if scored else ''}"


def dataset_of_task(name: str) -> str:
    """`tinythinker.csqa.analyze` -> `csqa`."""
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "tinythinker" or parts[1] not in benchmarks.BENCHMARKS:
        raise TaskNameError(f"{name!r} is not a tinythinker task name (tinythinker.<dataset>.<stage>, with dataset "
                            f"one of {', '.join(benchmarks.BENCHMARKS)})")
    return parts[1]


def parse_stage_mixture(name: str) -> tuple[str, str]:
    """`tinythinker.csqa.full_stages` -> (`csqa`, `full`)."""
    dataset = dataset_of_task(name)
    suffix = name.split(".", 2)[2]
    stage_type = suffix[: -len("_stages")] if suffix.endswith("_stages") else ""
    if stage_type not in formats.STAGE_TYPES:
        raise TaskNameError(f"{name!r} is not a stage mixture (tinythinker.<dataset>.<stage_type>_stages, with "
                            f"stage_type one of {', '.join(formats.STAGE_TYPES)})")
    return dataset, stage_type


def _question_from_bytes(qid, question, labels, texts, answer, facts=()) -> records.Question:
    """A TFDS question row (byte strings) as a Question."""
    return records.make_question(
        qid.decode(), question.decode(), list(zip((label.decode() for label in labels), (t.decode() for t in texts))),
        answer.decode(), [fact.decode() for fact in facts],
    )


def load_questions(dataset: str, split: str) -> list[records.Question]:
    """The questions of a split, structured, from the question task's source (the TFDS build)."""
    source = seqio.get_mixture_or_task(questions_task_name(dataset)).source
    return [
        _question_from_bytes(row["id"], row["question"], row["options"]["label"], row["options"]["text"],
                             row["answer"], row["facts"])
        for row in source.get_dataset(split=split, shuffle=False).as_numpy_iterator()
    ]


def summary_accuracy(targets, predictions) -> dict[str, float]:
    """Percent of predictions whose summary states the gold option; an unparseable summary is wrong."""
    hits = [formats.parse_answer(p) is not None and formats.parse_answer(p) == formats.parse_answer(t)
            for t, p in zip(targets, predictions)]
    return {"accuracy": 100.0 * float(np.mean(hits)) if hits else 0.0}


def _stage_dataset(teacher_file: str, stage: str, stage_type: str, split: str, shuffle_files: bool, seed=None):
    del split, shuffle_files, seed  # one split, one file: shuffling is the trainer's
    if not os.path.exists(teacher_file):
        raise records.DataError(
            teacher_file, None, None,
            "teacher records not found: run `tinythinker teacher run` (or `tinythinker data toyworld`) first",
        )
    teacher_records = records.read_teacher_records(teacher_file)
    rows = examples.stage_examples(teacher_records, stage, stage_type)
    return tf.data.Dataset.from_tensor_slices({key: [row[key] for row in rows] for key in ("id", "inputs", "targets")})


def _question_prompt_strings(qid, question, labels, texts, answer):
    """Formats a TFDS question with the format module, so the prompt strings exist in one place only."""
    q = _question_from_bytes(qid, question, labels, texts, answer)
    return formats.recall_input(q), formats.summary_target(q.answer)


@seqio.map_over_dataset
def _question_to_text(example):
    inputs, targets = tf.numpy_function(
        _question_prompt_strings,
        [example["id"], example["question"], example["options"]["label"], example["options"]["text"],
         example["answer"]],
        [tf.string, tf.string],
        stateful=False,
    )
    inputs.set_shape([])
    targets.set_shape([])
    return {**example, "inputs": inputs, "targets": targets}


def _pair_dataset(path: str, scored: bool, split: str, shuffle_files: bool, seed=None):
    del split, shuffle_files, seed  # one file; shuffling is the trainer's
    from tinythinker_jax.reflection import data as pair_data

    rows = pair_data.read_pairs(path, scored)
    columns = {"id": [row["id"] for row in rows], "inputs": [row["prompt"] for row in rows],
               "chosen": [row["chosen"] for row in rows], "rejected": [row["rejected"] for row in rows]}
    columns = {key: tf.constant(values, tf.string) for key, values in columns.items()}
    for key in pair_data.REFERENCE_FIELDS:  # NaN until the reference has scored the file
        columns[key] = tf.constant([row.get(key, np.nan) for row in rows], tf.float32)
    return tf.data.Dataset.from_tensor_slices(columns)


def load_vocabularies(name: str) -> None:
    """Loads the vocabularies of a task or mixture now, so that one that cannot be read fails with its one line
    (`Vocabulary`) before a dataset is built."""
    for feature in seqio.get_mixture_or_task(name).output_features.values():
        feature.vocabulary.vocab_size  # noqa: B018 (reading it loads the model)


def register_pair_task(name: str, path: str, vocabulary_path: str, scored: bool) -> None:
    """A task over one pair file (`tinythinker_jax.reflection.data`): prompt, chosen, rejected, tokenised."""
    feature = seqio.Feature(Vocabulary(vocabulary_path), add_eos=True)
    source = seqio.FunctionDataSource(functools.partial(_pair_dataset, path, scored), splits=("train",))
    _add_task(name, source, [], {"inputs": feature, "chosen": feature, "rejected": feature}, [])


def _add_task(name: str, source: seqio.DataSource, preprocessors: list, output_features, metric_fns) -> None:
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=source, output_features=output_features,
        preprocessors=preprocessors + [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        metric_fns=metric_fns,
    )


def register_dataset(dataset: str, data_dir: str | None = None, vocabulary_path: str | None = None) -> None:
    """(Re)registers every task and mixture of `dataset`, reading from `data_dir`.

    Args:
        dataset: a benchmark name (`benchmarks.BENCHMARKS`).
        data_dir: its dataset directory (default: `locations.dataset_dir`).
        vocabulary_path: a SentencePiece model (default: `locations.default_vocabulary`). One given here is
            loaded at once; a default one on first use (`load_vocabularies`). A vocabulary that cannot be
            read is a `locations.VocabularyError` saying how to pass a local copy.
    """
    benchmarks.get_benchmark(dataset)
    data_dir = data_dir or locations.dataset_dir(dataset)
    vocabulary = Vocabulary(vocabulary_path or locations.default_vocabulary(dataset, data_dir))
    if vocabulary_path:
        vocabulary.load_model()  # a path the caller chose is checked now; defaults, on first use
    output_features = {
        "inputs": seqio.Feature(vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }
    teacher_file = locations.teacher_path(data_dir)
    for stage_type, stages in formats.STAGE_TYPES.items():
        names = []
        for stage in stages:
            name = stage_task_name(dataset, stage, stage_type)
            source = seqio.FunctionDataSource(
                functools.partial(_stage_dataset, teacher_file, stage, stage_type), splits=("train",)
            )
            metric_fns = [summary_accuracy] if stage == formats.SUMMARIZE else []
            _add_task(name, source, [], output_features, metric_fns)
            names.append(name)
        mixture = stage_mixture_name(dataset, stage_type)
        seqio.MixtureRegistry.remove(mixture)
        seqio.MixtureRegistry.add(mixture, [(name, 1.0) for name in names])
    questions = seqio.TfdsDataSource(
        tfds_name=tfds_builder.tfds_name(dataset), tfds_data_dir=locations.tfds_dir(data_dir),
        splits=benchmarks.SPLITS,
    )
    _add_task(questions_task_name(dataset), questions, [_question_to_text], output_features, [summary_accuracy])


for _dataset in benchmarks.BENCHMARKS:
    register_dataset(_dataset)
