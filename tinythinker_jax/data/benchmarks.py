"""The benchmarks, their upstream files and the paper's splits, identical on every machine.

Seeded choices order questions by a SHA-256 of `{seed}:{id}`, not by a PRNG, so the splits
depend on nothing but the files and the seed (no library version, no platform).
"""

import dataclasses
import hashlib
import os
from typing import Callable

from tinythinker_jax.data import readers
from tinythinker_jax.data.records import DataError, Question, question_to_json, write_json, write_jsonl
from tinythinker_jax.errors import UserError, in_brief

SPLITS = ("train", "validation", "test")
SPLIT_SEED = 0
CSQA_VALIDATION_SIZE = 1221  # the paper: as many as the official dev set, drawn from train
MIN_SHUFFLED = 10  # the fewest questions whose 80/10/10 split leaves a question in every split


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    num_options: int
    raw_files: tuple[str, ...]
    split_rule: str
    make_splits: Callable[[str, int], dict[str, list[Question]]]  # (raw_dir, seed) -> splits


def _seeded_order(questions: list[Question], seed: int) -> list[Question]:
    return sorted(questions, key=lambda q: hashlib.sha256(f"{seed}:{q.id}".encode()).hexdigest())


def _raw_path(raw_dir: str, name: str) -> str:
    path = os.path.join(raw_dir, name)
    if not os.path.isdir(raw_dir):
        raise DataError(raw_dir, None, None, f"raw directory not found (it must hold {name})")
    if os.path.isdir(path):
        raise DataError(path, None, None, "is a directory; expected the raw benchmark file")
    if not os.path.exists(path):
        raise DataError(path, None, None, "raw benchmark file not found")
    return path


def _check_disjoint(files: dict[str, list[Question]]) -> None:
    """A question in two upstream files would land in two splits (in train and in test), so it is an error."""
    seen: dict[str, str] = {}
    for path, questions in files.items():
        shared = [q.id for q in questions if q.id in seen]
        if shared:
            others = ", ".join(sorted({seen[qid] for qid in shared}))
            raise DataError(path, None, "id", f"question ids also in {others} ({len(shared)}: "
                                              f"{in_brief(shared)}); a question must be in one split only, "
                                              f"so remove them from one of the files")
        seen.update((q.id, path) for q in questions)


def _official_splits(num_options: int) -> Callable[[str, int], dict[str, list[Question]]]:
    def make(raw_dir: str, seed: int) -> dict[str, list[Question]]:
        del seed  # the upstream files fix the splits
        files = {"train": "train.jsonl", "validation": "dev.jsonl", "test": "test.jsonl"}
        paths = {split: _raw_path(raw_dir, name) for split, name in files.items()}
        splits = {split: readers.read_multiple_choice_jsonl(path, num_options) for split, path in paths.items()}
        _check_disjoint({paths[split]: splits[split] for split in SPLITS})
        return splits
    return make


def _csqa_splits(raw_dir: str, seed: int) -> dict[str, list[Question]]:
    pool_path, test_path = _raw_path(raw_dir, "train_rand_split.jsonl"), _raw_path(raw_dir, "dev_rand_split.jsonl")
    pool = readers.read_multiple_choice_jsonl(pool_path, 5)
    test = readers.read_multiple_choice_jsonl(test_path, 5)
    if len(pool) <= CSQA_VALIDATION_SIZE:
        raise DataError(pool_path, None, None,
                        f"holds {len(pool)} questions, but the csqa split rule draws {CSQA_VALIDATION_SIZE} of them "
                        f"for validation and trains on the rest: it needs at least {CSQA_VALIDATION_SIZE + 1} "
                        f"(the upstream file has 9,741)")
    _check_disjoint({pool_path: pool, test_path: test})
    validation_ids = {q.id for q in _seeded_order(pool, seed)[:CSQA_VALIDATION_SIZE]}
    return {
        "train": [q for q in pool if q.id not in validation_ids],
        "validation": [q for q in pool if q.id in validation_ids],
        "test": test,
    }


def _shuffled_80_10_10(raw_dir: str, seed: int) -> dict[str, list[Question]]:
    path = _raw_path(raw_dir, "strategyqa_train.json")
    ordered = _seeded_order(readers.read_strategyqa_json(path), seed)
    if len(ordered) < MIN_SHUFFLED:
        raise DataError(path, None, None, f"holds {len(ordered)} questions; the seeded 80/10/10 split needs at "
                                          f"least {MIN_SHUFFLED}, so that validation and test get one each")
    num_train, num_validation = int(0.8 * len(ordered)), int(0.1 * len(ordered))
    return {
        "train": ordered[:num_train],
        "validation": ordered[num_train:num_train + num_validation],
        "test": ordered[num_train + num_validation:],
    }


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (
        Benchmark("csqa", 5, ("train_rand_split.jsonl", "dev_rand_split.jsonl"),
                  f"test = official dev; validation = {CSQA_VALIDATION_SIZE} seeded from train; train = the rest",
                  _csqa_splits),
        Benchmark("obqa", 4, ("train.jsonl", "dev.jsonl", "test.jsonl"), "official train/dev/test",
                  _official_splits(4)),
        Benchmark("strategyqa", 2, ("strategyqa_train.json",), "seeded 80/10/10 shuffle", _shuffled_80_10_10),
        # The built-in toy world writes its raw files in the OpenBookQA and StrategyQA layouts.
        Benchmark("toyworld", 5, ("train.jsonl", "dev.jsonl", "test.jsonl"), "official train/dev/test",
                  _official_splits(5)),
        Benchmark("toyworld_mc4", 4, ("train.jsonl", "dev.jsonl", "test.jsonl"), "official train/dev/test",
                  _official_splits(4)),
        Benchmark("toyworld_yesno", 2, ("strategyqa_train.json",), "seeded 80/10/10 shuffle", _shuffled_80_10_10),
    )
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ids_digest(questions: list[Question]) -> str:
    """A fingerprint of a split's membership and order, pinned by tests and kept in the manifest."""
    return hashlib.sha256("\n".join(q.id for q in questions).encode()).hexdigest()


def split_dataset(dataset: str, raw_dir: str, seed: int = SPLIT_SEED) -> tuple[dict[str, list[Question]], dict]:
    """Reads and checks the raw files and applies the split rule, writing nothing: (splits, manifest).

    Raises:
        DataError: a raw file is missing or malformed, holds too few questions for the rule, or shares
            question ids with another raw file.
    """
    benchmark = get_benchmark(dataset)
    splits = benchmark.make_splits(raw_dir, seed)
    manifest = {
        "dataset": dataset,
        "num_options": benchmark.num_options,
        "split_rule": benchmark.split_rule,
        "seed": seed,
        "raw_files": {name: _sha256_file(os.path.join(raw_dir, name)) for name in benchmark.raw_files},
        "splits": {split: {"count": len(splits[split]), "ids_sha256": ids_digest(splits[split])} for split in SPLITS},
    }
    return splits, manifest


def write_split_files(out_dir: str, splits: dict[str, list[Question]], manifest: dict) -> None:
    """Writes `{train,validation,test}.jsonl` (question records), then `manifest.json`."""
    for split in SPLITS:
        write_jsonl(os.path.join(out_dir, f"{split}.jsonl"), map(question_to_json, splits[split]))
    write_json(os.path.join(out_dir, "manifest.json"), manifest)


def write_splits(dataset: str, raw_dir: str, out_dir: str, seed: int = SPLIT_SEED) -> dict:
    """Writes `{train,validation,test}.jsonl` (question records) and `manifest.json`; returns the manifest.

    Nothing is written unless every raw file is read and split without an error.
    """
    splits, manifest = split_dataset(dataset, raw_dir, seed)
    write_split_files(out_dir, splits, manifest)
    return manifest
