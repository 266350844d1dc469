"""One self-reflection iteration end to end on the toy world: sampling, reference scoring, DPO training,
and resuming without redoing finished steps."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from processes import run_two_processes
from tinythinker_jax import chains
from tinythinker_jax.data import records
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import checkpoints, scoring, t5
from tinythinker_jax.phases import layout, loop, results, setup
from tinythinker_jax.reflection import data as pair_data
from tinythinker_jax.reflection import iteration, sampling
from tinythinker_jax.training import trainer

MIXTURE = "tinythinker.toyworld.full_stages"
LENGTHS = {"inputs": 192, "targets": 32}
CONFIG = t5.model_config("t5_1_0_tiny", vocab_size=768)
# The toy world's limits (its gins'): an untrained student runs every stage to the limit, and at the official 200
# tokens its summarize inputs (a recall and five analyses) reach 768-token buckets and a worker's memory 14 GB.
CHAINS = chains.ChainSettings(max_decode_length=48, max_summary_length=16)


@pytest.fixture(scope="module")
def sft_model_dir(prepared_toyworld, tmp_path_factory):
    """A pipeline directory whose phase 1 is done (two steps: these tests check mechanics, not learning)."""
    model_dir = str(tmp_path_factory.mktemp("pipeline"))
    trainer.train(model_dir=layout.sft_dir(model_dir), mixture_or_task_name=MIXTURE, task_feature_lengths=LENGTHS,
                  model_config=CONFIG, batch_size=8, train_steps=2, data_dir=prepared_toyworld, max_eval_questions=2,
                  chain_settings=CHAINS)
    return model_dir


def run(model_dir, data_dir, **overrides):
    settings = dict(
        model_dir=model_dir, iteration=1, mixture_or_task_name=MIXTURE, task_feature_lengths=LENGTHS,
        model_config=CONFIG, batch_size=8, rounds=2, data_dir=data_dir, max_questions=6, max_eval_questions=2,
        pair_sampling=sampling.PairSampling(num_samples=3, chunk_size=4), chain_settings=CHAINS, log_every=1,
    )
    return iteration.run_iteration(**{**settings, **overrides})


def metrics(model_dir):
    with open(os.path.join(layout.iteration_dir(model_dir, 1), "metrics.jsonl")) as f:
        return [row for row in map(json.loads, f) if "loss" in row]


def test_pair_blocks_follow_the_paper():
    counts = {"recall": 70, "analyze": 300}
    assert iteration.pair_blocks(counts, "recall_analyze", 32) == (("recall", 3), ("analyze", 15))
    assert iteration.pair_blocks(counts, "recall", 32) == (("recall", 3),)
    assert iteration.pair_blocks(counts, "analyze", 32) == (("analyze", 10),)  # 300 // 32 + 1, as run_dpo
    assert iteration.pair_blocks({"recall": 70, "analyze": 0}, "recall_analyze", 32) == (("recall", 3),)
    assert iteration.pair_blocks({"recall": 0, "analyze": 0}, "recall_analyze", 32) == ()


@pytest.fixture(scope="module")
def first_run(sft_model_dir, prepared_toyworld, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("reflect"))
    shutil.copytree(layout.sft_dir(sft_model_dir), layout.sft_dir(model_dir))
    return model_dir, run(model_dir, prepared_toyworld)


def test_iteration_writes_pairs_scores_and_the_best_model(first_run):
    model_dir, result = first_run
    out = layout.iteration_dir(model_dir, 1)
    pairs_dir = os.path.join(out, "pairs")
    # 6 questions in chunks of 4, and the settings that sampled them
    assert sorted(os.listdir(os.path.join(pairs_dir, "chunks"))) == ["00000.jsonl", "00001.jsonl", "settings.json"]
    counts = json.load(open(os.path.join(pairs_dir, "counts.json")))
    assert counts["questions"] == 6 and result.pairs == {"recall": counts["recall"], "analyze": counts["analyze"]}
    # The random student never states an option, so every sampled recall is rejected and the teacher's
    # recalls are the chosen side: at least one pair per question.
    assert counts["recall"] >= 6
    assert len(pair_data.read_pairs(sampling.pairs_path(pairs_dir, "recall"))) == counts["recall"]
    assert json.load(open(os.path.join(out, "best", "best.json")))["step"] == result.best_step
    assert results.read_done(out) == result and result.name == "iteration_1"
    assert set(result.wall_seconds) == {"generate", "score", "train"}


def test_reference_scores_are_the_reference_models_log_likelihoods(first_run):
    model_dir, _ = first_run
    reference = layout.reference_checkpoint(model_dir, 1)
    model, vocabulary = checkpoints.load_model(reference), checkpoints.load_vocabulary(reference)
    path = sampling.pairs_path(os.path.join(layout.iteration_dir(model_dir, 1), "pairs"), "recall", scored=True)
    rows = pair_data.read_pairs(path, scored=True)
    encode = lambda text, limit: list(vocabulary.encode(text))[: limit - 1] + [1]
    for side in ("chosen", "rejected"):
        expected = scoring.score(model, [encode(r["prompt"], LENGTHS["inputs"]) for r in rows],
                                 [encode(r[side], LENGTHS["targets"]) for r in rows])
        np.testing.assert_allclose([r[f"reference_{side}"] for r in rows], expected, rtol=1e-5, atol=1e-4)


def test_first_step_starts_at_the_reference(first_run):
    """Policy == reference before the first update: every reward is 0 and the DPO loss is log 2."""
    model_dir, _ = first_run
    first = metrics(model_dir)[0]
    assert first["step"] == 1
    assert math.isclose(first["dpo_loss"], math.log(2), abs_tol=1e-5)
    assert abs(first["rewards/chosen"]) < 1e-5 and abs(first["rewards/margin"]) < 1e-5
    assert {"nll", "rewards/accuracy", "rewards/rejected", "grad_norm", "learning_rate"} <= set(first)


def test_finished_steps_are_never_redone(first_run, prepared_toyworld, monkeypatch):
    model_dir, result = first_run

    def fail(*args, **kwargs):
        raise AssertionError("finished work was redone")

    monkeypatch.setattr(sampling, "sample_chunk", fail)
    monkeypatch.setattr(pair_data, "score_pairs", fail)
    monkeypatch.setattr(loop.Loop, "run", fail)
    assert run(model_dir, prepared_toyworld) == result


def test_training_resumes_from_finished_pairs_and_matches_the_first_run(first_run, prepared_toyworld, tmp_path,
                                                                        monkeypatch):
    """Cut after scoring: the re-run samples nothing and trains to the same losses."""
    model_dir, _ = first_run
    copy = str(tmp_path / "copy")
    shutil.copytree(layout.sft_dir(model_dir), layout.sft_dir(copy))
    shutil.copytree(os.path.join(layout.iteration_dir(model_dir, 1), "pairs"),
                    os.path.join(layout.iteration_dir(copy, 1), "pairs"))
    monkeypatch.setattr(sampling, "sample_chunk", lambda *a, **k: pytest.fail("pairs were sampled again"))
    resumed = run(copy, prepared_toyworld)
    assert [m["loss"] for m in metrics(copy)] == pytest.approx([m["loss"] for m in metrics(model_dir)], abs=1e-6)
    assert resumed.pairs == json.load(open(os.path.join(layout.iteration_dir(model_dir, 1), "done.json")))["pairs"]


def test_recall_and_analyze_pairs_train_in_blocks(sft_model_dir, prepared_toyworld, tmp_path):
    """Hand-written pair files stand in for sampling: both streams are trained, in the paper's blocks."""
    model_dir = str(tmp_path)
    shutil.copytree(layout.sft_dir(sft_model_dir), layout.sft_dir(model_dir))
    pairs_dir = os.path.join(layout.iteration_dir(model_dir, 1), "pairs")
    prompt = "Is a sofa furniture?\n(A) yes (B) no\n"
    records.write_jsonl(sampling.pairs_path(pairs_dir, "recall"), [
        {"id": f"q{i}", "prompt": prompt + "Recall:", "chosen": "Sofas are furniture.", "rejected": f"No {i}."}
        for i in range(5)])
    records.write_jsonl(sampling.pairs_path(pairs_dir, "analyze"), [
        {"id": f"q{i}", "prompt": prompt + "Analyze: For option A,", "chosen": "it is.", "rejected": ""}
        for i in range(12)])
    records.write_json(os.path.join(pairs_dir, "counts.json"),
                       {"recall": 5, "analyze": 12, "questions": 5, "wall_seconds": 0.0})
    result = run(model_dir, prepared_toyworld, batch_size=4)
    # Blocks: recall 5 // 4 + 1 = 2 steps, analyze (12 // 5 + 1) x 2 = 6 steps; a round is their sum, 8
    # steps, and two rounds are trained, as the official run_dpo. The analyze stream (3 batches) runs out
    # within its block, so every 5 steps are one pass over both streams and the next epoch starts.
    rows = metrics(model_dir)
    assert [row["step"] for row in rows] == list(range(1, 17))
    assert [("loss/recall" in row, "loss/analyze" in row) for row in rows] == \
        ([(True, False)] * 2 + [(False, True)] * 3) * 3 + [(True, False)]
    assert result.best_step in (8, 16)


def test_only_a_finished_previous_phase_is_the_reference(sft_model_dir, tmp_path, monkeypatch):
    """A phase cut short already has a best/ (its best so far), which is not M(i-1): the next iteration
    must not start from it."""
    best = os.path.join(layout.sft_dir(sft_model_dir), "best")
    monkeypatch.setattr(setup, "setup_data", lambda *a, **k: pytest.fail("started from a partial M(i-1)"))
    for phase, next_iteration in (("phase 1", 1), ("iteration 1", 2)):
        model_dir = str(tmp_path / f"before_iteration_{next_iteration}")
        shutil.copytree(best, os.path.join(layout.previous_dir(model_dir, next_iteration), "best"))
        with pytest.raises(UserError, match=f"but {phase} is not finished"):
            run(model_dir, None, iteration=next_iteration)
    with pytest.raises(UserError, match="ITERATION is 0: it must be a positive integer"):
        run(str(tmp_path), None, iteration=0)


def test_finished_chunks_are_reused_only_under_their_settings(tmp_path, monkeypatch):
    """A resumed generation reuses its finished chunks; under other settings it stops rather than mix stale
    chunks (here a 2-question last chunk would pass for a finished one) into the pairs."""
    questions = [records.make_question(f"q{i}", f"Question {i}?", [("A", "yes"), ("B", "no")], "A") for i in range(4)]
    sampled = []

    def sample_chunk(model, vocabulary, chunk, *args):
        sampled.append([question.id for question in chunk])
        return [{"stage": "recall", "id": q.id, "prompt": "p", "chosen": "c", "rejected": "r"} for q in chunk]

    def generate(questions, settings=sampling.PairSampling(num_samples=2, chunk_size=2), seed=0):
        return sampling.generate_pairs(None, None, questions, {}, str(tmp_path), chains.ChainSettings(), settings,
                                       seed)

    monkeypatch.setattr(sampling, "sample_chunk", sample_chunk)
    assert generate(questions[:3]) == generate(questions[:3]) == {"recall": 3, "analyze": 0}
    assert sampled == [["q0", "q1"], ["q2"]]  # the second call reused both chunks
    for changed in ({"questions": questions}, {"questions": questions[:3], "seed": 1},
                    {"questions": questions[:3], "settings": sampling.PairSampling(num_samples=3, chunk_size=2)}):
        with pytest.raises(ValueError, match="sampled under other settings"):
            generate(**changed)
    assert len(sampled) == 2


def test_bad_pair_file_names_line_and_field(tmp_path):
    path = str(tmp_path / "recall_pairs_scored.jsonl")
    records.write_jsonl(path, [{"id": "q", "prompt": "p", "chosen": "a", "rejected": "b",
                                "reference_chosen": -1.0, "reference_rejected": "x"}])
    with pytest.raises(records.DataError, match=r"recall_pairs_scored.jsonl:1: field 'reference_rejected'"):
        pair_data.read_pairs(path, scored=True)


TWO_PROCESS_SCRIPT = """
import json, os, shutil, sys, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize("127.0.0.1:" + sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jax.experimental import multihost_utils
sys.path.insert(0, {tests!r})
from test_reflection_iteration import metrics, run
from tinythinker_jax.partitioning import Partitioner
from tinythinker_jax.phases import layout, setup
from tinythinker_jax.reflection import iteration
if jax.process_index() == 0:
    # The sampled chunks without what was made of them: generation re-reads the chunks and writes the pairs.
    shutil.copytree(layout.sft_dir({source!r}), layout.sft_dir({target!r}))
    shutil.copytree(os.path.join(layout.iteration_dir({source!r}, 1), "pairs"),
                    os.path.join(layout.iteration_dir({target!r}, 1), "pairs"),
                    ignore=shutil.ignore_patterns("*scored*", "*_pairs.jsonl", "counts.json"))
else:  # a slower host, 3 s behind process 0 from the data's preparation on
    setup_data = setup.setup_data
    setup.setup_data = lambda *args, **kwargs: (setup_data(*args, **kwargs), time.sleep(3))[0]
multihost_utils.sync_global_devices("copied")
# Validation is left to the SFT tests.
run({target!r}, {data_dir!r}, partitioner=Partitioner(data=4, model=2), max_eval_questions=0)
print("LOSSES" + json.dumps([m["loss"] for m in metrics({target!r})]))
"""


def test_two_processes_on_a_sharded_mesh_match_one_device(first_run, prepared_toyworld, tmp_path):
    """Two local processes with 4 fake devices each, as a 4x2 mesh, process 1 lagging behind: the same pairs,
    reference scores and DPO losses as one device."""
    model_dir, _ = first_run
    target = str(tmp_path / "sharded")
    script = TWO_PROCESS_SCRIPT.format(tests=os.path.dirname(__file__), source=model_dir, target=target,
                                       data_dir=prepared_toyworld)
    outputs = run_two_processes(script, timeout=600)
    for output in outputs:
        sharded = json.loads(output.split("LOSSES", 1)[1].splitlines()[0])
        np.testing.assert_allclose(sharded, [m["loss"] for m in metrics(model_dir)], rtol=2e-5)
    pairs = [open(sampling.pairs_path(os.path.join(layout.iteration_dir(d, 1), "pairs"), "recall")).read()
             for d in (model_dir, target)]
    assert pairs[0] == pairs[1]
    scored = [pair_data.read_pairs(os.path.join(layout.iteration_dir(d, 1), "pairs", "recall_pairs_scored.jsonl"),
                                   scored=True) for d in (model_dir, target)]
    np.testing.assert_allclose(*[[[r["reference_chosen"], r["reference_rejected"]] for r in rows] for rows in scored],
                               rtol=1e-5)
