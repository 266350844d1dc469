"""Feature lengths from the data: no input or target is cut unless the user asks, and every cut is counted.

The CSQA tests build teacher records whose analyses are the official exemplars' (summarize inputs of
190-260 T5 tokens, as a real GPT-4o run gives), on the real CSQA questions and the T5 vocabulary.
"""

import dataclasses
import json
import os

import numpy as np
import pytest
import seqio

import tinythinker_tasks
from tinythinker_jax import chains, formats
from tinythinker_jax.data import lengths, locations, prepare
from tinythinker_jax.data.records import Rationale, TeacherRecord, read_questions, teacher_record_to_json, write_jsonl
from tinythinker_jax.models import decoding, t5
from tinythinker_jax.phases import setup, streams
from tinythinker_jax.teacher import parsing
from tinythinker_jax.training import trainer

EOS = 1


def converter_arrays(task_name, feature_lengths):
    """The reference: seqio's own trimming (`append_eos_after_trim`) and `EncDecFeatureConverter`."""
    dataset = seqio.get_mixture_or_task(task_name).get_dataset(
        sequence_length=feature_lengths, split="train", shuffle=False, seed=0)
    converted = seqio.EncDecFeatureConverter(pack=False)(dataset, feature_lengths)
    batches = list(converted.batch(8192).as_numpy_iterator())
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def test_stream_arrays_are_seqio_converter_arrays_whole_or_cut(prepared_toyworld):
    tinythinker_tasks.register_dataset("toyworld", prepared_toyworld)
    try:
        name = tinythinker_tasks.stage_task_name("toyworld", formats.SUMMARIZE)
        whole, stats = streams.load_task_arrays(name)
        widths = {"inputs": whole["encoder_input_tokens"].shape[1], "targets": whole["decoder_target_tokens"].shape[1]}
        reference = converter_arrays(name, widths)
        assert whole.keys() == reference.keys()
        for key in whole:
            np.testing.assert_array_equal(whole[key], reference[key])
        assert (stats["examples_cut"], stats["tokens_cut"], stats["requested_lengths"]) == (0, 0, None)
        assert widths["inputs"] == 192 >= stats["max_input_tokens"] > 128  # the bucket of the longest
        assert sum(stats["input_buckets"].values()) == stats["examples"] == len(whole["encoder_input_tokens"])

        short = {"inputs": 100, "targets": 16}  # the targets fit: only inputs are cut
        cut, cut_stats = streams.load_task_arrays(name, short)
        reference = converter_arrays(name, short)
        for key in cut:
            np.testing.assert_array_equal(cut[key], reference[key])
        input_lengths = (whole["encoder_input_tokens"] != 0).sum(axis=1)
        assert cut_stats["examples_cut"] == (input_lengths > 100).sum() > 0
        assert cut_stats["tokens_cut"] == (input_lengths - 100)[input_lengths > 100].sum()
        assert np.all(cut["encoder_input_tokens"][input_lengths > 100, -1] == EOS)  # cut rows keep their EOS
    finally:
        tinythinker_tasks.register_dataset("toyworld")


def test_fit_feature_pads_to_the_bucket_and_counts_cuts():
    sequences = [np.array([5, 6, EOS]), np.array([5] * 12 + [EOS]), np.array([7, EOS])]
    whole = lengths.fit_feature(sequences, None)
    assert whole.tokens.shape == (3, 16) and whole.max_tokens == 13 and whole.tokens_cut == 0
    assert whole.buckets == {8: 2, 16: 1}
    cut = lengths.fit_feature(sequences, 4)
    np.testing.assert_array_equal(cut.tokens, [[5, 6, EOS, 0], [5, 5, 5, EOS], [7, EOS, 0, 0]])
    assert (cut.cut_rows.tolist(), cut.tokens_cut) == ([False, True, False], 9)
    with pytest.raises(ValueError, match="no room"):
        lengths.fit_feature(sequences, 1)


@pytest.fixture(scope="module")
def csqa_long(benchmark_data_dir, tmp_path_factory):
    """CSQA's real questions; teacher records for 6 training questions carrying the official exemplars'
    key information and explanations (two samples each)."""
    data_dir = str(tmp_path_factory.mktemp("csqa"))
    prepare.prepare_benchmark("csqa", os.path.join(benchmark_data_dir, "csqa"), data_dir)
    with open(os.path.join(benchmark_data_dir, "exemplars", "csqa_cot.json")) as f:
        exemplars = json.load(f)
    rationales = []
    for exemplar in exemplars:
        if len(exemplar["Explanations"]) != 5:  # three of the official eight explain four options only
            continue
        explained = parsing.split_explanations("\n".join(exemplar["Explanations"]))
        texts = [explanation.text for explanation in explained]  # in the exemplar's option order
        rationales.append((exemplar["Key Information"], texts))
    questions = read_questions(locations.split_path(data_dir, "train"))[:6]
    records = [
        TeacherRecord(q, tuple(Rationale(rationales[(i + k) % len(rationales)][0],
                                         dict(zip(q.labels, rationales[(i + k) % len(rationales)][1])))
                               for k in range(2)))
        for i, q in enumerate(questions)
    ]
    write_jsonl(locations.teacher_path(data_dir), map(teacher_record_to_json, records))
    vocabulary = os.path.join(os.path.dirname(benchmark_data_dir.rstrip("/")), "vocab", "t5_spiece.model")
    tinythinker_tasks.register_dataset("csqa", data_dir, vocabulary)
    yield data_dir, seqio.SentencePieceVocabulary(vocabulary, extra_ids=locations.EXTRA_IDS), questions
    tinythinker_tasks.register_dataset("csqa")


def ends_with_summarize_cue(vocabulary, row):
    ids = [int(i) for i in row if i != 0]
    return ids[-1] == EOS and vocabulary.decode(ids[:-1]).endswith("Summarize:")


def test_csqa_summarize_inputs_over_200_tokens_are_trained_whole(csqa_long, tmp_path, capsys):
    _, vocabulary, _ = csqa_long
    built, stats = trainer.build_streams("csqa", "full", None, batch_size=4, seed=0)
    summarize = built[formats.SUMMARIZE].arrays["encoder_input_tokens"]
    assert stats[formats.SUMMARIZE]["max_input_tokens"] > 200
    assert all(entry["examples_cut"] == entry["tokens_cut"] == 0 for entry in stats.values())
    assert all(ends_with_summarize_cue(vocabulary, row) for row in summarize)
    setup.write_data_stats(str(tmp_path / "whole"), stats)
    assert json.load(open(tmp_path / "whole" / "data_stats.json")) == stats
    assert "cut" not in capsys.readouterr().out

    # The former default: a choice the user now sees, in the log and in data_stats.json.
    explicit = {"inputs": 200, "targets": 200}
    built, stats = trainer.build_streams("csqa", "full", explicit, batch_size=4, seed=0)
    input_lengths = (summarize != 0).sum(axis=1)
    entry = stats[formats.SUMMARIZE]
    assert entry["examples_cut"] == (input_lengths > 200).sum() > 0
    assert entry["tokens_cut"] == (input_lengths - 200)[input_lengths > 200].sum()
    assert entry["requested_lengths"] == explicit
    assert not all(ends_with_summarize_cue(vocabulary, row)
                   for row in built[formats.SUMMARIZE].arrays["encoder_input_tokens"])
    setup.write_data_stats(str(tmp_path / "cut"), stats)
    assert f"summarize: {entry['examples_cut']} of {entry['examples']} examples cut" in capsys.readouterr().out


def test_chain_inputs_are_never_cut_by_default_and_cuts_are_counted(csqa_long, monkeypatch):
    """A random model's 48-token analyses make summarize inputs over 200 tokens: passed whole by default."""
    _, vocabulary, questions = csqa_long
    model = t5.create_model(t5.model_config("t5_1_0_tiny"), seed=0)
    sent = []
    generate = decoding.generate

    def recording_generate(model, inputs, **kwargs):
        sent.append((inputs, kwargs["max_input_length"]))
        return generate(model, inputs, **kwargs)

    monkeypatch.setattr(decoding, "generate", recording_generate)
    settings = chains.ChainSettings(max_decode_length=48, max_summary_length=8)
    runner = chains.ChainRunner(model, vocabulary, settings)
    runner.run(questions[:3])
    summarize_inputs, cap = sent[-1]
    assert cap is None and runner.inputs_cut == runner.tokens_cut == 0
    assert max(len(ids) for ids in summarize_inputs) > 200
    assert all(ends_with_summarize_cue(vocabulary, ids) for ids in summarize_inputs)

    # A cap is raised to the widest training input, and what it still cuts is counted.
    capped = setup.chain_settings_for(chains.ChainSettings(max_input_length=100),
                                        {"summarize": {"input_length": 192}})
    assert capped.max_input_length == 192
    sent.clear()
    runner = chains.ChainRunner(model, vocabulary, dataclasses.replace(settings, max_input_length=200))
    runner.run(questions[:3])
    summarize_inputs, cap = sent[-1]
    assert cap == 200 and max(len(ids) for ids in summarize_inputs) == 200
    assert runner.inputs_cut >= 1 and runner.tokens_cut > 0


def test_the_chain_progress_bar_counts_every_stage_output_batch_by_batch(csqa_long, monkeypatch):
    """A long decoding (validation, evaluation, phase-2 sampling) shows its progress as batches come back:
    the bar ends at the chains' stage outputs (recall, one analysis per option, summary), reached in steps."""
    _, vocabulary, questions = csqa_long
    model = t5.create_model(t5.model_config("t5_1_0_tiny"), seed=0)
    bars = []

    class RecordingBar(chains.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": False})
            self.updates = []
            bars.append(self)

        def update(self, n=1):
            self.updates.append(n)
            return super().update(n)

    monkeypatch.setattr(chains, "tqdm", RecordingBar)
    sampled = decoding.SamplingConfig(temperature=0.7)
    settings = chains.ChainSettings(recall=sampled, max_decode_length=8, max_summary_length=8, batch_size=4)
    chains.ChainRunner(model, vocabulary, settings, progress="validation").run(questions[:3], num_chains=2)
    (bar,) = bars
    assert bar.desc.startswith("validation") and bar.total == 3 * 2 * (1 + 5 + 1)
    assert sum(bar.updates) == bar.total and len([n for n in bar.updates if n]) > 3

