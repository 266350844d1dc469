"""Where a dataset's files live. One directory per dataset:

    DIR/{train,validation,test}.jsonl   question records (`tinythinker data split`)
    DIR/manifest.json                   how the splits were made, with fingerprints
    DIR/tfds/                           the same splits as TFDS `tinythinker_qa/<dataset>`
    DIR/teacher/train.jsonl             teacher records (`tinythinker teacher run`, or the toy world's template teacher)
    DIR/spiece.model                    toy world only: its own small SentencePiece vocabulary

The default DIR is `$TINYTHINKER_DATA_ROOT/<dataset>`, with `~/.cache/tinythinker/data` when unset.
"""

import os
import re

T5_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
EXTRA_IDS = 100  # T5's sentinel ids on top of the SentencePiece pieces


def require_local(model_dir: str) -> None:
    """Refuses a URL: the trainer's own files (metrics, gin, pairs, reports) are written with Python's file
    API, which would take `gs://b/x` for a local directory `gs:/b/x` while Orbax wrote the checkpoints to the
    bucket."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", model_dir):
        raise ValueError(f"MODEL_DIR {model_dir!r} is a URL; mount the bucket (gcsfuse, as launch/tpu_vm.sh does "
                         f"at /gcs/BUCKET) and pass the mounted path")


def data_root() -> str:
    return os.environ.get("TINYTHINKER_DATA_ROOT") or os.path.join(os.path.expanduser("~"), ".cache", "tinythinker", "data")


def dataset_dir(dataset: str) -> str:
    return os.path.join(data_root(), dataset)


def split_path(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, f"{split}.jsonl")


def manifest_path(data_dir: str) -> str:
    return os.path.join(data_dir, "manifest.json")


def tfds_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "tfds")


def teacher_path(data_dir: str) -> str:
    return os.path.join(data_dir, "teacher", "train.jsonl")


def toy_vocabulary_path(data_dir: str) -> str:
    return os.path.join(data_dir, "spiece.model")


def default_vocabulary(dataset: str, data_dir: str) -> str:
    """T5's vocabulary for the benchmarks; the toy world's own small one for the toy world."""
    return toy_vocabulary_path(data_dir) if dataset.startswith("toyworld") else T5_VOCABULARY
