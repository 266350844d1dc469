"""Every experiment gin parses, names the model it promises, and builds and trains one step on the tiny model."""

import glob
import os

import jax
import pytest
from flax import nnx

import gin
import tinythinker_tasks
from tinythinker_jax import cli, formats
from tinythinker_jax.data import locations, prepare
from tinythinker_jax.data.records import Rationale, TeacherRecord, read_questions, teacher_record_to_json, write_jsonl
from tinythinker_jax.models import t5
from tinythinker_jax.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "gin", "experiments", "*.gin")))


def parse(files, bindings=(), finalize=True):
    gin.clear_config()
    gin.add_config_file_search_path(REPO)
    gin.parse_config_files_and_bindings([os.path.join(REPO, f) for f in files], list(bindings),
                                        finalize_config=finalize)


@pytest.fixture(scope="module")
def benchmark_dirs(benchmark_data_dir, tmp_path_factory):
    """Each benchmark split for real, with hand-made rationales for a few questions standing in for a teacher."""
    dirs = {}
    for dataset in ("csqa", "obqa", "strategyqa"):
        data_dir = str(tmp_path_factory.mktemp(dataset))
        prepare.prepare_benchmark(dataset, os.path.join(benchmark_data_dir, dataset), data_dir)
        records = [TeacherRecord(q, (Rationale("A general fact.", {l: f"about {l}." for l in q.labels}),))
                   for q in read_questions(locations.split_path(data_dir, "train"))[:4]]
        write_jsonl(locations.teacher_path(data_dir), map(teacher_record_to_json, records))
        dirs[dataset] = data_dir
    dirs["vocabulary"] = os.path.join(os.path.dirname(benchmark_data_dir.rstrip("/")), "vocab", "t5_spiece.model")
    return dirs


def test_there_is_an_experiment_per_benchmark_and_size():
    for dataset in ("csqa", "obqa", "strategyqa"):
        for size in ("small", "base", "large"):
            assert f"{dataset}_t5_{size}_sft.gin" in EXPERIMENTS
        for stage_type in ("summarize", "recall_summarize", "analyze_summarize"):
            assert f"{dataset}_t5_base_sft_{stage_type}.gin" in EXPERIMENTS
        for stage_type in ("recall", "analyze"):
            assert f"{dataset}_t5_base_dpo_{stage_type}.gin" in EXPERIMENTS


# The published parameter counts of google-t5/t5-{small,base,large}.
PARAMETERS = {"tiny": None, "mini": None, "small": 60_506_624, "base": 222_903_552, "large": 737_668_096}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_gin_parses_and_builds_its_model_and_datasets(experiment, request):
    """The full-size model is built abstractly (shapes only); the datasets are the real stage streams."""
    dataset, size = experiment.split("_t5_")[0], experiment.split("_t5_")[1].split("_")[0]
    # Through the pipeline gin, which includes the SFT and reflect run gins; MODEL_DIR is the user's.
    parse(["gin/runs/pipeline.gin", f"gin/experiments/{experiment}"], finalize=False)
    try:
        reflect_stage_type = gin.query_parameter("REFLECT_STAGE_TYPE/macro.value")
        config = gin.get_configurable(t5.model_config)()
        mixture = gin.query_parameter("MIXTURE_OR_TASK_NAME/macro.value")
        lengths = gin.query_parameter("TASK_FEATURE_LENGTHS/macro.value")
    finally:
        gin.clear_config()
    toy = dataset.startswith("toyworld")
    assert reflect_stage_type == (experiment.split("_dpo_")[1][: -len(".gin")] if "_dpo_" in experiment
                                  else "recall_analyze")
    assert config == t5.model_config(f"t5_1_0_{size}", **({"vocab_size": 768, "dropout_rate": 0.0} if toy else {}))
    if PARAMETERS[size]:
        state = nnx.state(t5.abstract_model(config), nnx.Param)
        assert sum(leaf.size for leaf in jax.tree.leaves(state)) == PARAMETERS[size]
    ds, stage_type = tinythinker_tasks.parse_stage_mixture(mixture)
    assert ds == dataset
    data_dir, vocabulary = data_location(dataset, request)
    tinythinker_tasks.register_dataset(dataset, data_dir, vocabulary)
    try:
        built, stats = trainer.build_streams(dataset, stage_type, lengths, batch_size=4, seed=0)
    finally:
        tinythinker_tasks.register_dataset(dataset)
    assert lengths is None  # the paper's setting: every example whole
    assert tuple(built) == tuple(stats) == formats.stages_of(stage_type)
    for stage, stream in built.items():
        batch = stream.batch(epoch=0, index=0)
        assert batch["encoder_input_tokens"].shape[0] == 4
        assert stats[stage]["examples_cut"] == stats[stage]["tokens_cut"] == 0
        assert stats[stage]["max_input_tokens"] <= batch["encoder_input_tokens"].shape[1]
        assert stats[stage]["max_target_tokens"] <= batch["decoder_target_tokens"].shape[1]


@pytest.fixture(scope="module")
def toy_dirs(prepared_toyworld, tmp_path_factory):
    """Toy-world variants, prepared on first use."""
    dirs = {"toyworld": prepared_toyworld}

    def get(dataset):
        if dataset not in dirs:
            dirs[dataset] = str(tmp_path_factory.mktemp(dataset))
            prepare.ensure_prepared(dataset, dirs[dataset])
        return dirs[dataset]

    return get


def data_location(dataset, request):
    if dataset.startswith("toyworld"):
        return request.getfixturevalue("toy_dirs")(dataset), None
    dirs = request.getfixturevalue("benchmark_dirs")
    return dirs[dataset], dirs["vocabulary"]


@pytest.mark.parametrize("dataset", ["csqa", "obqa", "strategyqa"])
def test_one_training_step_from_the_command_line_on_the_tiny_model(dataset, request, tmp_path):
    data_dir, vocabulary = data_location(dataset, request)
    argv = ["train", "--gin_search_paths", REPO, "--gin_file=gin/runs/sft.gin",
            f"--gin_file=gin/experiments/{dataset}_t5_base_sft.gin", "--gin_file=gin/models/t5_1_0_tiny.gin",
            f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=2",
            f"--gin.DATA_DIR='{data_dir}'", f"--gin.VOCABULARY_PATH='{vocabulary}'",
            "--gin.trainer.train.max_eval_questions=1"]
    try:
        assert cli.main(argv) == 0
    finally:
        gin.clear_config()
    assert "t5_1_0_tiny" in open(os.path.join(tmp_path, "operative_config.gin")).read()
    assert os.path.exists(os.path.join(tmp_path, "checkpoints", "1"))
