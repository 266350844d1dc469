"""The interleaved block schedule: order, exhaustion, epochs and resumption from saved state."""

import json

import pytest

from tinythinker_jax.phases.schedule import BlockSchedule, stage_blocks


def run(schedule, steps, state=None):
    state = state or schedule.initial_state()
    draws = []
    for _ in range(steps):
        draw, state = schedule.next(state)
        draws.append((draw.stream, draw.epoch, draw.batch_index))
    return draws, state


def test_paper_blocks():
    assert stage_blocks(("recall", "analyze", "summarize"), 100, 5) == (
        ("recall", 100), ("analyze", 500), ("summarize", 100))


def test_blocks_cycle_and_exhausted_streams_are_skipped_until_all_are():
    schedule = BlockSchedule(stage_blocks(("recall", "analyze", "summarize"), 2, 2),
                             {"recall": 3, "analyze": 5, "summarize": 2})
    assert schedule.cycle_steps == 8 and schedule.steps_in_epoch(0) == 10
    draws, _ = run(schedule, 14)
    assert [d[0][0] + str(d[2]) for d in draws] == [
        "r0", "r1", "a0", "a1", "a2", "a3", "s0", "s1",  # first cycle
        "r2", "a4",  # recall and analyze run out mid-block; summarize is already exhausted
        "r0", "r1", "a0", "a1",  # epoch 2 starts at the first block
    ]
    assert [d[1] for d in draws] == [0] * 10 + [1] * 4


def test_zero_length_blocks_are_ablated_stages():
    schedule = BlockSchedule((("recall", 0), ("analyze", 0), ("summarize", 3)), {"summarize": 4})
    draws, _ = run(schedule, 5)
    assert draws == [("summarize", 0, 0), ("summarize", 0, 1), ("summarize", 0, 2), ("summarize", 0, 3),
                     ("summarize", 1, 0)]
    with pytest.raises(ValueError, match="every block has length 0"):
        BlockSchedule((("recall", 0),), {"recall": 1})
    with pytest.raises(ValueError, match="no batches"):
        BlockSchedule((("recall", 1),), {"recall": 0})


def test_resuming_from_json_state_continues_identically():
    schedule = BlockSchedule(stage_blocks(("recall", "analyze", "summarize"), 3, 4),
                             {"recall": 7, "analyze": 30, "summarize": 6})
    uncut, _ = run(schedule, 120)
    first, state = run(schedule, 47)
    second, _ = run(schedule, 73, json.loads(json.dumps(state)))
    assert first + second == uncut


def test_batches_per_epoch_may_change_from_epoch_to_epoch():
    """A packed stream's rows differ per epoch: the schedule counts each epoch's own batches."""
    schedule = BlockSchedule((("recall", 2), ("summarize", 1)), {"recall": lambda epoch: 3 - epoch, "summarize": 1})
    assert [schedule.steps_in_epoch(epoch) for epoch in range(3)] == [4, 3, 2]
    draws, _ = run(schedule, 9)
    assert [(stream[0], epoch, index) for stream, epoch, index in draws] == [
        ("r", 0, 0), ("r", 0, 1), ("s", 0, 0), ("r", 0, 2),
        ("r", 1, 0), ("r", 1, 1), ("s", 1, 0),
        ("r", 2, 0), ("s", 2, 0)]
