"""Packing phase 1's streams (`data/packing.py`, `Stream(pack=True)`): every example once per epoch, in
rows it fits, with the loss it has alone, at a data position that resumes exactly."""

import json
import os

import numpy as np
import optax
import pytest
from flax import nnx

from tinythinker_jax.data import lengths, packing
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import t5
from tinythinker_jax.phases import schedule, streams
from tinythinker_jax.training import losses, trainer

INPUT_WIDTH, TARGET_WIDTH = 24, 12


def random_arrays(num_examples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A stream of examples of random lengths (EOS last), laid out as `load_task_arrays` lays them out."""
    rng = np.random.default_rng(seed)

    def tokens(width: int) -> np.ndarray:
        # Mostly short, as a stage's examples are against its longest, some as wide as the row.
        lengths_ = np.minimum(rng.integers(1, width + 1, num_examples), rng.integers(1, width + 1, num_examples))
        ids = rng.integers(3, 128, (num_examples, width)).astype(np.int32)
        ids[np.arange(width) >= lengths_[:, None]] = 0
        ids[np.arange(num_examples), lengths_ - 1] = 1
        return ids

    return lengths.encoder_decoder_arrays(tokens(INPUT_WIDTH), tokens(TARGET_WIDTH))


def unpacked_examples(batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Each packed example of a batch, cut out of its row by its segment id."""
    found = []
    for row in range(len(batch["encoder_input_tokens"])):
        for segment in range(1, batch["decoder_segment_ids"][row].max() + 1):
            encoder = batch["encoder_segment_ids"][row] == segment
            decoder = batch["decoder_segment_ids"][row] == segment
            found.append({name: batch[name][row][encoder if name in packing.ENCODER_FEATURES else decoder]
                          for name in (*packing.ENCODER_FEATURES, *packing.DECODER_FEATURES)})
    return found


def unpadded(arrays: dict[str, np.ndarray], example: int) -> dict[str, np.ndarray]:
    input_length, target_length = (side[example] for side in packing.example_lengths(arrays))
    return {name: array[example, :input_length if name in packing.ENCODER_FEATURES else target_length]
            for name, array in arrays.items()}


def test_an_epoch_packs_every_example_once_in_order_into_rows_it_fits():
    arrays = random_arrays(103)
    stream = streams.Stream(arrays, batch_size=4, seed=7, pack=True)
    for epoch in (0, 1):
        batches = [stream.batch(epoch, index) for index in range(stream.num_batches(epoch))]
        found = [example for batch in batches for example in unpacked_examples(batch)]
        # Consecutive examples of the epoch's order, each whole, with its own decoder input (from start id 0).
        assert len(found) == stream.num_examples
        for example, position in zip(found, stream.order(epoch)):
            expected = unpadded(arrays, position)
            assert expected.keys() == example.keys()
            for name in expected:
                np.testing.assert_array_equal(example[name], expected[name])
        for batch in batches:
            for side, width in (("encoder", INPUT_WIDTH), ("decoder", TARGET_WIDTH)):
                segments = batch[packing.SEGMENT_IDS[side]]
                assert segments.shape == (4, width) and segments.dtype == np.int32
                for row in segments:  # segments 1, 2, ... from the start of the row, then padding only
                    used = row[row > 0]
                    assert (row[:len(used)] > 0).all()
                    np.testing.assert_array_equal(np.unique(used), np.arange(1, row.max() + 1))
                    np.testing.assert_array_equal(used, np.sort(used))
            np.testing.assert_array_equal(batch["decoder_loss_weights"], batch["decoder_target_tokens"] != 0)
        # Greedy: a row is closed only when the next example does not fit it.
        starts = stream.row_starts(epoch)
        input_lengths, target_lengths = (side[stream.order(epoch)] for side in packing.example_lengths(arrays))
        for begin, end in zip(starts[:-2], starts[1:-1]):
            assert (input_lengths[begin:end + 1].sum() > INPUT_WIDTH
                    or target_lengths[begin:end + 1].sum() > TARGET_WIDTH)
        # The epoch's last batch is filled with all-zero rows.
        filler = len(starts) - 1 - 4 * (stream.num_batches(epoch) - 1)
        assert all(not batches[-1][name][filler:].any() for name in batches[-1])
    assert stream.num_batches(0) < -(-stream.num_examples // 4)


def test_packing_refuses_an_example_wider_than_its_row_and_features_it_cannot_pack():
    with pytest.raises(ValueError, match="packing never cuts"):
        packing.row_starts(np.array([3, 9]), np.array([2, 2]), 8, 4)
    with pytest.raises(ValueError, match="pair_weights"):
        streams.Stream({**random_arrays(3), "pair_weights": np.ones(3)}, batch_size=2, seed=0, pack=True)


def test_a_packed_batch_gives_each_example_the_loss_it_has_alone():
    """Token by token, the cross entropy of a packed example is its unpacked one; over an epoch the summed
    loss is the same packed or not (the token-mean loss of a step averages over its tokens, whichever)."""
    model = t5.create_model(t5.model_config("t5_1_1_tiny", vocab_size=128, dropout_rate=0.0), seed=0)
    arrays = random_arrays(14, seed=1)
    packed = streams.Stream(arrays, batch_size=3, seed=0, pack=True)
    unpacked = streams.Stream(arrays, batch_size=3, seed=0)
    assert packed.num_batches(0) < unpacked.num_batches(0)

    @nnx.jit
    def token_losses(model, batch):
        segments = {name: batch[name] for name in packing.SEGMENT_IDS.values() if name in batch}
        logits = model(batch["encoder_input_tokens"], batch["decoder_input_tokens"], **segments)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_target_tokens"])

    sft_loss = nnx.jit(losses.sft_loss)
    alone, packed_losses, summed = {}, [], {}
    for name, stream in (("unpacked", unpacked), ("packed", packed)):
        summed[name] = 0.0
        for index in range(stream.num_batches(0)):
            batch = stream.batch(0, index)
            loss, values = sft_loss(model, batch, None)
            summed[name] += float(loss * values["tokens"])
            per_token = np.asarray(token_losses(model, batch))
            if stream is unpacked:
                for row, example in enumerate(stream.order(0)[index * 3:(index + 1) * 3]):
                    alone[example] = per_token[row][batch["decoder_loss_weights"][row] > 0]
                continue
            segments = batch["decoder_segment_ids"]
            assert int(values["examples"]) == int(segments.max(axis=1).sum())
            packed_losses += [per_token[row][segments[row] == segment]
                              for row in range(3) for segment in range(1, segments[row].max() + 1)]
    assert len(packed_losses) == len(alone)
    for example, example_losses in zip(packed.order(0), packed_losses):
        np.testing.assert_allclose(example_losses, alone[example], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(summed["packed"], summed["unpacked"], rtol=1e-5)


def test_a_packed_stream_resumes_at_its_position_with_the_same_batches():
    """Batches per epoch differ from epoch to epoch when packed; the schedule counts each epoch's own, and
    fresh streams (a resumed run, or another process) give the same batch for every (epoch, index)."""
    def build():
        return {"recall": streams.Stream(random_arrays(40, seed=2), batch_size=4, seed=1, pack=True),
                "analyze": streams.Stream(random_arrays(90, seed=3), batch_size=4, seed=2, pack=True)}

    first = build()
    counts = {name: [stream.num_batches(epoch) for epoch in range(6)] for name, stream in first.items()}
    assert any(len(set(per_epoch)) > 1 for per_epoch in counts.values())
    blocks = schedule.BlockSchedule((("recall", 2), ("analyze", 3)),
                                    {name: stream.num_batches for name, stream in first.items()})
    steps = sum(map(blocks.steps_in_epoch, range(3)))
    assert steps == sum(counts["recall"][:3]) + sum(counts["analyze"][:3])
    state, draws, states = schedule.BlockSchedule.initial_state(), [], []
    for _ in range(steps):
        states.append(json.loads(json.dumps(state)))  # as a checkpoint keeps it
        draw, state = blocks.next(state)
        draws.append(draw)
    assert blocks.next(state)[0] == schedule.Draw("recall", 3, 0)
    assert [d.epoch for d in draws] == sorted(d.epoch for d in draws)
    for epoch in range(3):
        for name in first:
            assert sorted(d.batch_index for d in draws if (d.epoch, d.stream) == (epoch, name)) == list(
                range(counts[name][epoch]))
    expected = [first[d.stream].batch(d.epoch, d.batch_index) for d in draws]

    resumed = build()
    resumed_blocks = schedule.BlockSchedule(blocks.blocks, {name: s.num_batches for name, s in resumed.items()})
    at = len(draws) // 2 + 1
    state = states[at]
    for step in range(at, steps):
        draw, state = resumed_blocks.next(state)
        assert draw == draws[step]
        halves = [resumed[draw.stream].batch(draw.epoch, draw.batch_index, rows) for rows in (slice(0, 2),
                                                                                              slice(2, 4))]
        for name, array in expected[step].items():
            np.testing.assert_array_equal(np.concatenate([half[name] for half in halves]), array)


def test_an_unpacked_stream_keeps_its_batches_and_filler_rows():
    arrays = random_arrays(10)
    stream = streams.Stream(arrays, batch_size=4, seed=5)
    assert [stream.num_batches(epoch) for epoch in range(3)] == [3, 3, 3]
    last = stream.batch(1, 2)
    assert set(last) == set(arrays)
    np.testing.assert_array_equal(last["encoder_input_tokens"][:2], arrays["encoder_input_tokens"][stream.order(1)[8:]])
    assert not last["decoder_loss_weights"][2:].any()


def test_a_packed_training_run_records_its_examples_per_row(small_toyworld, tmp_path):
    """End to end on the toy world's summarize stream (one compile, no validation chains). Its examples are
    nearly as long as the stream is wide, so they pack one to a row: packing gains nothing there."""
    result = trainer.train(
        model_dir=str(tmp_path), mixture_or_task_name="tinythinker.toyworld.summarize_stages",
        model_config=t5.model_config("t5_1_0_tiny", vocab_size=768), batch_size=4, train_steps=3, interval=1,
        data_dir=small_toyworld, max_eval_questions=0, log_every=1, pack=True)
    assert (result.step, result.settings["pack"]) == (3, True)
    stats = json.load(open(os.path.join(tmp_path, "data_stats.json")))["summarize"]
    assert stats["examples_per_row"] == round(stats["examples"] / stats["packed_rows"], 3)
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [row for row in map(json.loads, f) if "loss" in row]
    assert len(rows) == 3 and all(np.isfinite(row["loss"]) and row["examples_per_row"] >= 1 for row in rows)
    assert all(row["examples_per_second"] > 0 for row in rows)


def test_resuming_under_another_batching_of_the_data_is_refused(small_toyworld, tmp_path):
    """A checkpoint's data position names examples only under the batch size, packing and seed it was saved
    with: a run continued with other ones stops with what changed."""
    settings = dict(model_dir=str(tmp_path), mixture_or_task_name="tinythinker.toyworld.summarize_stages",
                    model_config=t5.model_config("t5_1_0_tiny", vocab_size=768), batch_size=4, interval=1,
                    data_dir=small_toyworld, max_eval_questions=0, log_every=1)
    trainer.train(**settings, train_steps=2, pack=True)
    with pytest.raises(UserError, match=r"saved under another batching .*'pack': True.*'pack': False"):
        trainer.train(**settings, train_steps=3, pack=False)
    with pytest.raises(UserError, match=r"'batch_size': 4.*'batch_size': 8"):
        trainer.train(**{**settings, "batch_size": 8}, train_steps=3, pack=True)
    assert trainer.train(**settings, train_steps=3, pack=True).step == 3
