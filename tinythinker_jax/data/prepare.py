"""Turns raw files into a ready dataset directory (see `locations` for its layout).

The splits, the manifest and the TFDS build are one unit: `prepare_benchmark` checks every raw file and
builds all three in a hidden staging directory next to the dataset directory, then moves them in with
renames, the manifest last. A failure before that leaves the dataset directory as it was; readers
(`ensure_prepared`) treat a directory without a manifest as not prepared, so even a kill during the
renames cannot pass for a finished dataset.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import time

from tinythinker_jax.data import benchmarks, locations, tfds_builder
from tinythinker_jax.data.records import (
    DataError,
    Question,
    iter_json_lines,
    json_line,
    load_json,
    question_to_json,
    read_questions,
    teacher_record_to_json,
    write_jsonl,
)
from tinythinker_jax.errors import in_brief

TOY_VARIANTS = {"toyworld": "mc5", "toyworld_mc4": "mc4", "toyworld_yesno": "yesno"}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What `prepare_benchmark` did: the manifest, whether anything was rebuilt, and where stale teacher files went."""

    manifest: dict
    rebuilt: bool
    stale_teacher_dir: str | None = None


def _split_files_match(data_dir: str, splits: dict[str, list[Question]]) -> bool:
    for split in benchmarks.SPLITS:
        path = locations.split_path(data_dir, split)
        expected = "".join(json_line(question_to_json(q)) for q in splits[split]).encode("utf-8")
        if not os.path.isfile(path) or os.path.getsize(path) != len(expected):
            return False
        with open(path, "rb") as f:
            if f.read() != expected:
                return False
    return True


def _up_to_date(dataset: str, data_dir: str, splits: dict[str, list[Question]], manifest: dict) -> bool:
    """Whether the directory already holds exactly these splits, this manifest and a finished TFDS build."""
    try:
        current = load_json(locations.manifest_path(data_dir))
    except DataError:
        return False
    return (current == manifest and tfds_builder.is_built(dataset, locations.tfds_dir(data_dir))
            and _split_files_match(data_dir, splits))


def _teacher_split_path(data_dir: str, split: str, suffix: str = ".jsonl") -> str:
    return os.path.join(os.path.dirname(locations.teacher_path(data_dir)), f"{split}{suffix}")


def _stale_teacher_records(data_dir: str, splits: dict[str, list[Question]]) -> dict[str, list[str]]:
    """Per split, the ids of teacher records whose question the new splits put elsewhere or word otherwise
    (splits without any are left out).

    A teacher record belongs to the split it was made from; one whose question left that split would
    train on a validation or test question. The response cache is keyed by request, so it stays valid.
    """
    stale = {}
    for split in benchmarks.SPLITS:
        path = _teacher_split_path(data_dir, split)
        if os.path.exists(path):
            # Keyed by question id, but looked up by whatever id a record holds, which may not be a string.
            wording: dict[object, tuple] = {q.id: _wording(question_to_json(q)) for q in splits[split]}
            changed = [str(obj.get("id")) if isinstance(obj, dict) else f"line {line}"
                       for line, obj in iter_json_lines(path)
                       if not isinstance(obj, dict) or wording.get(obj.get("id")) != _wording(obj)]
            if changed:
                stale[split] = changed
    return stale


def _wording(record: dict) -> tuple:
    """A question's text and options as a record holds them (its answer may be the teacher's, so it is left out)."""
    options = record.get("options")
    return record.get("question"), json.dumps(options) if isinstance(options, list) else None


def _refuse(data_dir: str, stale: dict[str, list[str]]) -> DataError:
    split, ids = next(iter(stale.items()))
    return DataError(_teacher_split_path(data_dir, split), None, None,
                     f"the new splits take {len(ids)} of its questions out of {split} or change them "
                     f"({in_brief(ids)}); nothing was changed. "
                     f"Pass --force to write the new splits and move the teacher files of those splits to "
                     f"teacher/stale-<time>/ (the response cache stays, so a new teacher run pays only for new "
                     f"requests), or split into another --out_dir")


def _move_aside(data_dir: str, splits: list[str]) -> str:
    """Moves the teacher records and reports of `splits` into `teacher/stale-<UTC time>/`: nothing a teacher run
    paid for is deleted."""
    target = tempfile.mkdtemp(prefix=time.strftime("stale-%Y%m%d-%H%M%S-", time.gmtime()),
                              dir=os.path.dirname(locations.teacher_path(data_dir)))
    for split in splits:
        for path in (_teacher_split_path(data_dir, split), _teacher_split_path(data_dir, split, "_report.json")):
            if os.path.exists(path):
                os.rename(path, os.path.join(target, os.path.basename(path)))
    return target


def _install(staging: str, data_dir: str) -> None:
    """Moves the staged splits, TFDS build and manifest into `data_dir`, keeping everything else there."""
    if not os.path.isdir(data_dir) or not os.listdir(data_dir):
        if os.path.isdir(data_dir):
            os.rmdir(data_dir)
        os.rename(staging, data_dir)  # a new directory appears whole
        return
    parent, name = os.path.split(os.path.abspath(data_dir))
    trash = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
    manifest = locations.manifest_path(data_dir)
    if os.path.lexists(manifest):
        os.rename(manifest, os.path.join(trash, "manifest.json"))  # without it the directory reads as unprepared
    entries = [os.path.basename(locations.split_path(data_dir, s)) for s in benchmarks.SPLITS]
    for entry in entries + [os.path.basename(locations.tfds_dir(data_dir))]:
        target = os.path.join(data_dir, entry)
        if os.path.lexists(target):
            os.rename(target, os.path.join(trash, entry))
        os.rename(os.path.join(staging, entry), target)
    os.rename(os.path.join(staging, "manifest.json"), manifest)
    shutil.rmtree(trash)


def prepare_benchmark(dataset: str, raw_dir: str, data_dir: str, seed: int = benchmarks.SPLIT_SEED,
                      force: bool = False) -> Prepared:
    """Splits the raw files, writes the manifest and builds the TFDS dataset in `data_dir`, as one unit.

    Every raw file is read and checked before anything is written. When the directory already holds these
    very splits, manifest and TFDS build, nothing is touched. Other contents of the directory are kept,
    except teacher records of questions that the new splits put elsewhere or word otherwise.

    Args:
        dataset: a benchmark name (`benchmarks.BENCHMARKS`).
        raw_dir: the directory with its upstream files.
        data_dir: the dataset directory to write; created if missing.
        seed: the split seed.
        force: replace splits that teacher records in `data_dir/teacher/` were made for, moving those records
            (and their reports) to `teacher/stale-<UTC time>/`; without it that is refused.

    Returns:
        What was done (`Prepared`).

    Raises:
        DataError: a raw file is unusable or too small for the split rule, raw files share questions,
            `data_dir` is a file, or (without `force`) the new splits would orphan teacher records.
    """
    splits, manifest = benchmarks.split_dataset(dataset, raw_dir, seed)
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(data_dir, None, None, "is a file; expected a dataset directory (or a path to create one)")
    if _up_to_date(dataset, data_dir, splits, manifest):
        return Prepared(manifest, rebuilt=False)
    stale = _stale_teacher_records(data_dir, splits)
    if stale and not force:
        raise _refuse(data_dir, stale)
    parent, name = os.path.split(os.path.abspath(data_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.split-", dir=parent)  # same file system: renames are atomic
    try:
        benchmarks.write_split_files(staging, splits, manifest)
        tfds_builder.build(dataset, staging, locations.tfds_dir(staging))
        stale_dir = _move_aside(data_dir, list(stale)) if stale else None
        _install(staging, data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Prepared(manifest, rebuilt=True, stale_teacher_dir=stale_dir)


def prepare_toyworld(data_dir: str, dataset: str = "toyworld", seed: int = 0, num_samples: int = 2,
                     teacher_noise: float = 0.0) -> dict:
    """Generates the toy world, its splits, template-teacher records and vocabulary; returns the manifest.

    Args:
        data_dir: The dataset directory to write.
        dataset: `toyworld` (5 options), `toyworld_mc4` or `toyworld_yesno`.
        seed: The world's seed (entities, facts, questions and splits).
        num_samples: Teacher rationales per training question.
        teacher_noise: The share of rationales that state a wrong category (`ToyWorld.teacher_record`).

    Returns:
        The split manifest.
    """
    from tinythinker_jax.data.toyworld import ToyWorld

    vocabulary = locations.toy_vocabulary_path(data_dir)
    if os.path.exists(vocabulary):
        os.remove(vocabulary)  # the mark of a finished preparation goes first, so an interrupted one is redone
    world = ToyWorld.generate(seed=seed)
    raw_dir = os.path.join(data_dir, "raw")
    world.write_raw(raw_dir, TOY_VARIANTS[dataset])
    # The template teacher costs nothing and is rewritten below, so records of an earlier world may go aside.
    manifest = prepare_benchmark(dataset, raw_dir, data_dir, force=True).manifest
    train = read_questions(locations.split_path(data_dir, "train"))
    write_jsonl(locations.teacher_path(data_dir),
                (teacher_record_to_json(world.teacher_record(q, num_samples, teacher_noise)) for q in train))
    world.train_vocabulary(vocabulary)
    return manifest


def ensure_prepared(dataset: str, data_dir: str) -> None:
    """The toy world is made on first use; a benchmark must have been split by the user."""
    if dataset in TOY_VARIANTS:
        # The vocabulary is written last, so its presence means an earlier preparation finished.
        if not os.path.exists(locations.toy_vocabulary_path(data_dir)):
            prepare_toyworld(data_dir, dataset)
        return
    split_again = f"run `tinythinker data split --dataset {dataset} --raw_dir RAW --out_dir {data_dir}`"
    manifest_path = locations.manifest_path(data_dir)
    if not os.path.exists(manifest_path):
        raise DataError(manifest_path, None, None, f"dataset {dataset!r} is not prepared here: {split_again}")
    manifest = load_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("dataset") != dataset:
        found = manifest.get("dataset") if isinstance(manifest, dict) else None
        raise DataError(manifest_path, None, "dataset", f"this directory holds {found!r}, not {dataset!r}: "
                                                        f"pass the {dataset} directory, or {split_again}")
    if not tfds_builder.is_built(dataset, locations.tfds_dir(data_dir)):
        raise DataError(locations.tfds_dir(data_dir), None, None, f"the TFDS build of the splits is missing: "
                                                                  f"{split_again}")
