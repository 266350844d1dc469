"""The benchmarks as a TFDS dataset, built offline from split files, read by `seqio.TfdsDataSource`.

`tinythinker_qa/<dataset>` has one config per benchmark. Its manual directory is the output of
`tinythinker data split`: question-record JSONL per split, so the splitting rule lives in one place.
"""

import os

import tensorflow_datasets as tfds

from tinythinker_jax.data.benchmarks import BENCHMARKS, SPLITS
from tinythinker_jax.data.records import question_to_json, read_questions

TFDS_NAME = "tinythinker_qa"
TFDS_VERSION = "1.0.0"


def tfds_name(dataset: str) -> str:
    return f"{TFDS_NAME}/{dataset}:{TFDS_VERSION}"


class TinythinkerQa(tfds.core.GeneratorBasedBuilder):
    """Multiple-choice questions with labelled options and a gold label."""

    VERSION = tfds.core.Version(TFDS_VERSION)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"{name} questions") for name in BENCHMARKS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Run `tinythinker data split --dataset <name> --raw_dir RAW --out_dir DIR`; DIR is the manual directory."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "question": tfds.features.Text(),
                "options": tfds.features.Sequence({"label": tfds.features.Text(), "text": tfds.features.Text()}),
                "answer": tfds.features.Text(),
                "facts": tfds.features.Sequence(tfds.features.Text()),
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(os.path.join(dl_manager.manual_dir, f"{split}.jsonl"))
                for split in SPLITS}

    def _generate_examples(self, path):
        for question in read_questions(os.fspath(path)):
            yield question.id, question_to_json(question)


def is_built(dataset: str, tfds_data_dir: str) -> bool:
    """Whether a finished build of `tinythinker_qa/<dataset>` is under `tfds_data_dir` (TFDS writes its
    `dataset_info.json` last)."""
    name, version = tfds_name(dataset).split(":")
    return os.path.isfile(os.path.join(tfds_data_dir, name, version, "dataset_info.json"))


def build(dataset: str, split_dir: str, tfds_data_dir: str) -> None:
    """Prepares `tinythinker_qa/<dataset>` under `tfds_data_dir` from the split files in `split_dir`."""
    tfds.disable_progress_bar()  # our commands report progress themselves
    builder = tfds.builder(tfds_name(dataset), data_dir=tfds_data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=split_dir))
