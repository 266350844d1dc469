"""Shared fixtures: a SentencePiece vocabulary trained on the fly and the real benchmark files."""

import os
import shutil
import tempfile

import pytest
import sentencepiece as spm

# Many tests build the same tiny models: a persistent compilation cache (shared with the xdist workers and
# the subprocesses tests start, through the environment) compiles each program once per test session. The
# process that made it removes it at the session's end.
_SESSION_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE_DIR = tempfile.mkdtemp(prefix="tinythinker-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE_DIR
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

_VOCAB_TEXT = [
    "Where would you find a sofa? (A) house (B) ocean (C) sky (D) desert (E) moon",
    "Recall: Analyze: For option A, Summarize: So the answer is option B.",
    "A sofa is furniture, and furniture is kept in a house, not in the ocean or the sky.",
    "Does a zorblat eat copper? yes no Key Information: Explanations: is correct. Because incorrect.",
]


def pytest_unconfigure(config):
    if _SESSION_CACHE_DIR is not None:
        shutil.rmtree(_SESSION_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def small_vocab(tmp_path_factory) -> str:
    """A tiny SentencePiece model with T5's special ids, so tests never need a download."""
    prefix = str(tmp_path_factory.mktemp("vocab") / "spiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_VOCAB_TEXT * 20), model_prefix=prefix, vocab_size=120, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    return prefix + ".model"


@pytest.fixture(scope="session")
def benchmark_data_dir() -> str:
    """The upstream benchmark files; tests that need them are skipped, with a reason, without them."""
    path = os.environ.get("TINYTHINKER_DATA_DIR")
    if not path:
        pytest.skip("TINYTHINKER_DATA_DIR is not set: it must point at the raw benchmark files (CI sets it)")
    if not os.path.isdir(path):
        pytest.fail(f"TINYTHINKER_DATA_DIR={path} is not a directory")
    return path


@pytest.fixture(scope="session")
def prepared_toyworld(tmp_path_factory) -> str:
    """The default toy world as a ready dataset directory (splits, TFDS build, teacher records, vocabulary)."""
    from tinythinker_jax.data import prepare

    data_dir = str(tmp_path_factory.mktemp("toyworld"))
    prepare.ensure_prepared("toyworld", data_dir)
    return data_dir


@pytest.fixture(scope="module")
def small_toyworld(prepared_toyworld, tmp_path_factory) -> str:
    """The toy world with teacher records for 40 questions, for tests of mechanics, not learning."""
    from tinythinker_jax.data import locations

    data_dir = tmp_path_factory.mktemp("small_toyworld")
    shutil.copytree(prepared_toyworld, data_dir, dirs_exist_ok=True)
    teacher = locations.teacher_path(str(data_dir))
    with open(teacher) as f:
        lines = f.readlines()[:40]
    with open(teacher, "w") as f:
        f.writelines(lines)
    return str(data_dir)


@pytest.fixture(scope="session")
def vocab_path(tmp_path_factory) -> str:
    """The SentencePiece model the random Hugging Face T5 test models are saved with."""
    from tinythinker_jax.models import testing

    return testing.sentencepiece_model(str(tmp_path_factory.mktemp("t5_vocab")))


# The README's command (`-n 2 --dist loadscope --no-loadscope-reorder`) runs each module whole on one worker,
# modules in collection order. These, the longest (measured), go first, longest first, so that the two
# workers finish together instead of one running a long module alone at the end.
FIRST_MODULES = ("test_learning.py", "test_trainer.py", "test_reflection_iteration.py", "test_experiment_gins.py",
                 "test_pipeline.py")


@pytest.fixture
def forbid_redoing_work(monkeypatch) -> None:
    """Makes training, pair sampling and scoring, and evaluation fail the test: for re-runs that must find every
    piece finished. (Loop.run trains both phases; the trainers themselves stay, since gin registered them.)"""
    from tinythinker_jax import evaluation
    from tinythinker_jax.phases import loop
    from tinythinker_jax.reflection import data as pair_data
    from tinythinker_jax.reflection import sampling

    def fail(*args, **kwargs):
        raise AssertionError("finished work was redone")

    for module, name in ((sampling, "sample_chunk"), (pair_data, "score_pairs"), (loop.Loop, "run"),
                         (evaluation, "evaluate")):
        monkeypatch.setattr(module, name, fail)


def pytest_collection_modifyitems(items):
    def position(item):
        name = item.path.name
        return FIRST_MODULES.index(name) if name in FIRST_MODULES else len(FIRST_MODULES)

    items.sort(key=position)
