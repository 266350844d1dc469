"""The official TinyThinker code's rules that ours follows, checked without a model: phase 2's block schedule
(`dpo.py`'s `run_dpo`) and self-consistency (`generate.py`'s `self_consistency` and its sampling settings)."""

import json
import os

import pytest

import gin
import tinythinker_tasks
from tinythinker_jax import chains, cli, evaluation, pipeline
from tinythinker_jax.data import prepare
from tinythinker_jax.data.records import make_question
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import checkpoints, decoding, t5
from tinythinker_jax.phases import schedule
from tinythinker_jax.reflection import iteration

# Phase 2's schedule, from hand-made pair counts: 100 recall and 450 analyze pairs at batch 32, 10 rounds.
COUNTS, BATCH, ROUNDS = {"recall": 100, "analyze": 450}, 32, 10


@pytest.mark.parametrize("stage_type, blocks", [
    # recall: 100 // 32 + 1 = 4; analyze: (450 // 100 + 1) x 4 = 20.
    ("recall_analyze", (("recall", 4), ("analyze", 20))),
    ("recall", (("recall", 4),)),
    # The ablation's analyze block counts analyze pairs alone: 450 // 32 + 1 = 15, not 20.
    ("analyze", (("analyze", 15),)),
])
def test_blocks_steps_and_validations_follow_run_dpo(stage_type, blocks):
    assert iteration.pair_blocks(COUNTS, stage_type, BATCH) == blocks
    round_steps = sum(length for _, length in blocks)
    total_steps, eval_every = iteration.training_steps(blocks, ROUNDS)
    assert (total_steps, eval_every) == (ROUNDS * round_steps, round_steps)
    # The loop validates (and saves) every `eval_every` steps and at the end: once per round.
    validations = [step for step in range(1, total_steps + 1) if step % eval_every == 0 or step == total_steps]
    assert validations == [round_steps * (r + 1) for r in range(ROUNDS)]


def test_stages_without_pairs_get_no_block():
    assert iteration.pair_blocks({"recall": 100, "analyze": 0}, "recall_analyze", BATCH) == (("recall", 4),)
    assert iteration.pair_blocks({"recall": 0, "analyze": 0}, "recall_analyze", BATCH) == ()
    assert iteration.pair_blocks({"recall": 0, "analyze": 0}, "analyze", BATCH) == ()


def test_a_round_of_blocks_wraps_into_the_next_epoch_as_the_official_loop():
    """Each block outlasts its stream (4 recall and 15 analyze batches against blocks of 4 and 20 steps): a
    stream exhausted within its block is skipped and a new epoch starts once both are, so the 240 steps
    are 12 whole passes (19 batches each) and 12 batches of a 13th: 4 recall, then 8 analyze."""
    blocks = iteration.pair_blocks(COUNTS, "recall_analyze", BATCH)
    total_steps, _ = iteration.training_steps(blocks, ROUNDS)
    blocked = schedule.BlockSchedule(blocks, {"recall": 4, "analyze": 15})
    state, draws = blocked.initial_state(), []
    for _ in range(total_steps):
        draw, state = blocked.next(state)
        draws.append(draw)
    assert [draw.stream for draw in draws[:19]] == ["recall"] * 4 + ["analyze"] * 15
    assert [(draw.stream, draw.epoch, draw.batch_index) for draw in draws[19:21]] == \
        [("recall", 1, 0), ("recall", 1, 1)]
    assert sum(draw.stream == "recall" for draw in draws) == 12 * 4 + 4
    assert sum(draw.stream == "analyze" for draw in draws) == 12 * 15 + 8
    assert draws[-1].epoch == 12


# Self-consistency's vote.

def chain_list(*predictions):
    return [chains.Chain(None, None, "", prediction) for prediction in predictions]


def test_no_answer_is_a_candidate_of_the_vote():
    assert chains.vote(chain_list(None, None, "A")) is None
    assert chains.vote(chain_list(None, "A", "A", "B", None, "A")) == "A"
    question = make_question("q", "Is it?", [("A", "yes"), ("B", "no")], "A")
    assert chains.accuracy([question], [chains.vote(chain_list(None, None, "A"))]) == 0.0


def test_a_tie_goes_to_the_earliest_first_occurrence_as_counter_most_common():
    assert chains.vote(chain_list("A", "B", "B", "A")) == "A"
    assert chains.vote(chain_list("B", "A", "A", "B")) == "B"
    assert chains.vote(chain_list(None, "A", "A", None)) is None
    assert chains.vote(chain_list("C", None, None, "C", "A")) == "C"
    assert chains.vote([]) is None


# Self-consistency's sampling settings.

def run_cli(monkeypatch, *flags):
    """The keyword arguments `tinythinker evaluate` passes to `evaluate_checkpoint`."""
    passed = {}
    monkeypatch.setattr(evaluation, "evaluate_checkpoint", lambda **kwargs: passed.update(kwargs) or
                        evaluation.EvaluationResult(1.0, 1, "predictions_test.jsonl", "summary_test.json"))
    assert cli.main(["evaluate", "--checkpoint", "best", "--dataset", "toyworld", "--out_dir", "out", *flags]) == 0
    return passed


def test_the_command_defaults_to_greedy_for_one_chain_and_the_official_sampling_for_several(monkeypatch):
    one = run_cli(monkeypatch)
    assert one["sampling"] == decoding.SamplingConfig() and one["sampled_stages"] == ("recall", "analyze")
    several = run_cli(monkeypatch, "--num_chains", "10")
    assert several["sampling"] == decoding.SamplingConfig(temperature=0.7, top_k=0)
    assert several["sampled_stages"] == ("recall", "analyze")
    every_stage = run_cli(monkeypatch, "--num_chains", "10", "--top_k", "40",
                          "--sampled_stages", "recall,analyze,summarize")
    assert every_stage["sampling"] == decoding.SamplingConfig(temperature=0.7, top_k=40)
    assert every_stage["sampled_stages"] == ("recall", "analyze", "summarize")
    assert run_cli(monkeypatch, "--num_chains", "10", "--temperature", "0")["sampling"].greedy


class FakeRunner:
    """Stands in for the chain runner: records its settings, and every chain answers A."""

    settings = None
    inputs_cut = tokens_cut = 0

    def __init__(self, model, vocabulary, settings, progress=None):
        FakeRunner.settings = settings

    def run(self, questions, stage_type, num_chains, seed):
        return [chain_list(*["A"] * num_chains) for _ in questions]


@pytest.fixture
def no_model(monkeypatch):
    """`evaluate_checkpoint` down to the chain runner, with neither data nor a checkpoint."""
    question = make_question("q", "Is it?", [("A", "yes"), ("B", "no")], "A")
    monkeypatch.setattr(prepare, "ensure_prepared", lambda *args: None)
    monkeypatch.setattr(tinythinker_tasks, "register_dataset", lambda *args: None)
    monkeypatch.setattr(tinythinker_tasks, "load_questions", lambda dataset, split: [question])
    monkeypatch.setattr(checkpoints, "load_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(checkpoints, "load_config", lambda *args: t5.model_config("t5_1_0_tiny"))
    monkeypatch.setattr(checkpoints, "load_vocabulary", lambda *args: None)
    monkeypatch.setattr(chains, "ChainRunner", FakeRunner)


def evaluate(tmp_path, **kwargs):
    evaluation.evaluate_checkpoint(checkpoint_path="best", mixture_or_task_name="tinythinker.toyworld.full_stages",
                                   output_dir=str(tmp_path), data_dir=str(tmp_path), **kwargs)
    return FakeRunner.settings, json.loads((tmp_path / "summary_test.json").read_text())


def test_self_consistency_samples_recall_and_analyze_and_keeps_the_summary_greedy(no_model, tmp_path):
    settings, summary = evaluate(tmp_path, num_chains=10)
    official = decoding.SamplingConfig(temperature=0.7, top_k=0)
    assert (settings.recall, settings.analyze, settings.summarize) == (official, official, chains.GREEDY)
    assert summary["num_chains"] == 10 and summary["accuracy"] == 1.0
    assert summary["sampling"] == {
        "recall": {"temperature": 0.7, "top_k": 0, "top_p": 1.0},
        "analyze": {"temperature": 0.7, "top_k": 0, "top_p": 1.0},
        "summarize": {"temperature": 0.0, "top_k": 0, "top_p": 1.0},
    }


def test_every_stage_can_be_sampled_and_one_chain_is_greedy(no_model, tmp_path):
    sampled = decoding.SamplingConfig(temperature=0.5, top_k=40)
    settings, summary = evaluate(tmp_path, num_chains=5, sampling=sampled,
                                 sampled_stages=("recall", "analyze", "summarize"))
    assert (settings.recall, settings.analyze, settings.summarize) == (sampled, sampled, sampled)
    assert summary["sampling"]["summarize"] == {"temperature": 0.5, "top_k": 40, "top_p": 1.0}
    settings, _ = evaluate(tmp_path)
    assert (settings.recall, settings.analyze, settings.summarize) == (chains.GREEDY,) * 3
    with pytest.raises(UserError, match="sampled_stages is \\('recall', 'sumarize'\\)"):
        evaluate(tmp_path, num_chains=5, sampled_stages=("recall", "sumarize"))


def by_gin(tmp_path, *bindings):
    """The chain settings `tinythinker evaluate --gin_file=gin/runs/evaluate.gin` runs with."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = ["evaluate", "--gin_search_paths", repo, "--gin_file=gin/runs/evaluate.gin",
            "--gin.MIXTURE_OR_TASK_NAME='tinythinker.toyworld.full_stages'", "--gin.CHECKPOINT_PATH='best'",
            f"--gin.EVAL_OUTPUT_DIR='{tmp_path}'", f"--gin.DATA_DIR='{tmp_path}'", *bindings]
    try:
        assert cli.main(argv) == 0
    finally:
        gin.clear_config()
    return FakeRunner.settings


def test_the_gin_file_has_the_same_defaults_and_can_sample_every_stage(no_model, tmp_path):
    official = decoding.SamplingConfig(temperature=0.7, top_k=0)
    settings = by_gin(tmp_path)
    assert (settings.recall, settings.analyze, settings.summarize) == (chains.GREEDY,) * 3
    settings = by_gin(tmp_path, "--gin.NUM_CHAINS=10")
    assert (settings.recall, settings.analyze, settings.summarize) == (official, official, chains.GREEDY)
    settings = by_gin(tmp_path, "--gin.NUM_CHAINS=10", "--gin.SAMPLING=%SAMPLING_CONFIG",
                      "--gin.eval/decoding.SamplingConfig.temperature=0.5",
                      "--gin.SAMPLED_STAGES=('recall', 'analyze', 'summarize')")
    assert settings.summarize == settings.recall == decoding.SamplingConfig(temperature=0.5)


def test_the_pipelines_self_consistency_samples_as_the_official_code():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    gin.add_config_file_search_path(repo)
    try:
        gin.parse_config_files_and_bindings(
            [os.path.join(repo, "gin/runs/pipeline.gin"),
             os.path.join(repo, "gin/experiments/toyworld_yesno_t5_mini_pipeline.gin")],
            ["MODEL_DIR = 'run'", "DATA_DIR = 'data'", "TEST_NUM_CHAINS = 10"])
        bindings = gin.get_bindings(pipeline.run_pipeline)
    finally:
        gin.clear_config()
    assert bindings["test_num_chains"] == 10
    voting = evaluation.stage_settings(chains.ChainSettings(),
                                       decoding.SamplingConfig(temperature=bindings["test_temperature"]),
                                       bindings["test_sampled_stages"])
    official = decoding.SamplingConfig(temperature=0.7, top_k=0)
    assert (voting.recall, voting.analyze, voting.summarize) == (official, official, chains.GREEDY)
