"""Where a dataset's files live. One directory per dataset:

    DIR/{train,validation,test}.jsonl   question records (`tinythinker data split`)
    DIR/manifest.json                   how the splits were made, with fingerprints
    DIR/tfds/                           the same splits as TFDS `tinythinker_qa/<dataset>`
    DIR/teacher/train.jsonl             teacher records (`tinythinker teacher run`, or the toy world's template teacher)
    DIR/spiece.model                    toy world only: its own small SentencePiece vocabulary

The default DIR is `$TINYTHINKER_DATA_ROOT/<dataset>`, with `~/.cache/tinythinker/data` when unset.
The benchmarks' default vocabulary is T5's, read from Google Cloud Storage unless `$TINYTHINKER_VOCABULARY`
names a local copy.
"""

import os
import re
import tempfile

from tinythinker_jax.errors import UserError

T5_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
VOCABULARY_ENV = "TINYTHINKER_VOCABULARY"  # a local copy of T5's vocabulary, for every command
EXTRA_IDS = 100  # T5's sentinel ids on top of the SentencePiece pieces


def require_local(path: str, setting: str = "MODEL_DIR") -> None:
    """Refuses a URL: the trainer's own files (metrics, gin, pairs, reports) are written with Python's file
    API, which would take `gs://b/x` for a local directory `gs:/b/x` while Orbax wrote the checkpoints to the
    bucket.

    Args:
        path: A directory the run writes to.
        setting: The flag or gin macro that gave it, for the message.

    Raises:
        UserError: When `path` is a URL.
    """
    if is_url(path):
        raise UserError(f"{setting} {path!r} is a URL; mount the bucket (gcsfuse, as launch/tpu_vm.sh does at "
                        f"/gcs/BUCKET) and pass the mounted path")


def require_writable(path: str, setting: str = "MODEL_DIR") -> None:
    """Makes sure the run can write into directory `path` before it starts: creates it (a run would) and a
    temporary file in it.

    Args:
        path: A directory the run writes to.
        setting: The flag or gin macro that gave it, for the message.

    Raises:
        UserError: When the directory cannot be created or written, with the system's reason.
    """
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{setting} {path!r} cannot be written ({e.strerror or e}): choose a directory you "
                        f"can write to") from e


def data_root() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "tinythinker", "data")
    return os.environ.get("TINYTHINKER_DATA_ROOT") or default


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
    """The toy world's own small vocabulary for the toy world; for the benchmarks, T5's: the file that
    `$TINYTHINKER_VOCABULARY` names, else the copy on Google Cloud Storage."""
    if dataset.startswith("toyworld"):
        return toy_vocabulary_path(data_dir)
    return os.environ.get(VOCABULARY_ENV) or T5_VOCABULARY


def is_url(path: str) -> bool:
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


class VocabularyError(UserError):
    """A vocabulary that cannot be read, in one line that says how to give a local one instead."""

    def __init__(self, path: str, problem: str):
        super().__init__(
            f"{path}: {problem}. Offline, pass a local copy of T5's sentencepiece.model (from {T5_VOCABULARY}, or "
            f"the spiece.model of a checkpoint made by `tinythinker convert`) with --vocab FILE (data preview), "
            f"--gin.VOCABULARY_PATH=\"'FILE'\" (train, reflect, pipeline) or {VOCABULARY_ENV}=FILE (every command)")


def check_local_vocabulary(path: str) -> None:
    """Refuses a local vocabulary path that is not a file before anything tries to load it (URLs are
    checked when they are read)."""
    if is_url(path):
        return
    if os.path.isdir(path):
        raise VocabularyError(path, "is a directory, not a SentencePiece model file")
    if not os.path.exists(path):
        raise VocabularyError(path, "vocabulary file not found")
