"""Turns raw files into a ready dataset directory (see `locations` for its layout)."""

import os

import sentencepiece as spm

from tinythinker_jax.data import benchmarks, locations, tfds_builder
from tinythinker_jax.data.records import DataError, read_questions, teacher_record_to_json, write_jsonl

TOY_VARIANTS = {"toyworld": "mc5", "toyworld_mc4": "mc4", "toyworld_yesno": "yesno"}
TOY_VOCABULARY_SIZE = 600


def prepare_benchmark(dataset: str, raw_dir: str, data_dir: str, seed: int = benchmarks.SPLIT_SEED) -> dict:
    """Splits the raw files, writes the manifest and builds the TFDS dataset; returns the manifest."""
    manifest = benchmarks.write_splits(dataset, raw_dir, data_dir, seed)
    tfds_builder.build(dataset, data_dir, locations.tfds_dir(data_dir))
    return manifest


def _train_toy_vocabulary(corpus: list[str], path: str) -> None:
    # T5's id conventions (pad 0, eos 1, unk 2, no bos) so the model code treats both vocabularies alike;
    # one thread keeps the trained model identical run to run.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=path[: -len(".model")], vocab_size=TOY_VOCABULARY_SIZE,
        model_type="bpe", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        num_threads=1, minloglevel=2, character_coverage=1.0,
    )


def prepare_toyworld(data_dir: str, dataset: str = "toyworld", seed: int = 0, num_samples: int = 2) -> dict:
    """Generates the toy world, its splits, template-teacher records and vocabulary; returns the manifest."""
    from tinythinker_jax.data.toyworld import ToyWorld

    world = ToyWorld.generate(seed=seed)
    raw_dir = os.path.join(data_dir, "raw")
    world.write_raw(raw_dir, TOY_VARIANTS[dataset])
    manifest = prepare_benchmark(dataset, raw_dir, data_dir)
    train = read_questions(locations.split_path(data_dir, "train"))
    write_jsonl(locations.teacher_path(data_dir),
                (teacher_record_to_json(world.teacher_record(q, num_samples)) for q in train))
    _train_toy_vocabulary(world.corpus(), locations.toy_vocabulary_path(data_dir))
    return manifest


def ensure_prepared(dataset: str, data_dir: str) -> None:
    """The toy world is made on first use; a benchmark must have been split by the user."""
    if dataset in TOY_VARIANTS:
        # The vocabulary is written last, so its presence means an earlier preparation finished.
        if not os.path.exists(locations.toy_vocabulary_path(data_dir)):
            prepare_toyworld(data_dir, dataset)
        return
    if os.path.exists(locations.manifest_path(data_dir)):
        return
    raise DataError(
        locations.manifest_path(data_dir), None, None,
        f"dataset {dataset!r} is not prepared here: run `tinythinker data split --dataset {dataset} "
        f"--raw_dir RAW --out_dir {data_dir}`",
    )
