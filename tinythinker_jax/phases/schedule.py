"""The paper's interleaving of stage streams in blocks of steps, as a pure, checkpointable state machine.

Blocks cycle `recall x interval`, `analyze x interval*num_options`, `summarize x interval`, ...; a
stream exhausted for the epoch is skipped until every stream is, then the next epoch starts at the
first block. The state is a small JSON-able dict, so a resumed run takes exactly the next batch.
A stream's batches per epoch may change from epoch to epoch (a packed stream's rows do); the state then
still names the next batch, since the schedule asks for the counts of the epoch it is in.
"""

import dataclasses
from typing import Callable, Mapping, Sequence, Union

# Batches in an epoch of a stream: one count for every epoch, or a function of the epoch.
BatchCount = Union[int, Callable[[int], int]]


@dataclasses.dataclass(frozen=True)
class Draw:
    stream: str
    epoch: int
    batch_index: int  # position of this batch in the stream's epoch order


@dataclasses.dataclass(frozen=True)
class BlockSchedule:
    blocks: tuple[tuple[str, int], ...]  # (stream, steps per block), in cycle order
    num_batches: Mapping[str, BatchCount]  # batches per epoch of every stream

    def __post_init__(self):
        active = [(name, length) for name, length in self.blocks if length > 0]
        if not active:
            raise ValueError(f"every block has length 0: {self.blocks}")
        for name, _ in active:
            if name not in self.num_batches or self.batches(name, 0) <= 0:
                raise ValueError(f"stream {name!r} has no batches")

    def batches(self, name: str, epoch: int) -> int:
        """Batches of stream `name` in `epoch`."""
        count = self.num_batches[name]
        return count if isinstance(count, int) else count(epoch)

    @property
    def cycle_steps(self) -> int:
        """Steps of one full cycle of blocks: the evaluation period."""
        return sum(length for _, length in self.blocks)

    def steps_in_epoch(self, epoch: int) -> int:
        """Steps of `epoch`: every batch of every stream that has a block."""
        return sum(self.batches(name, epoch) for name in {name for name, length in self.blocks if length > 0})

    @staticmethod
    def initial_state() -> dict:
        return {"epoch": 0, "block": 0, "in_block": 0, "consumed": {}}

    def next(self, state: Mapping) -> tuple[Draw, dict]:
        """The next batch to train on and the state after it."""
        epoch, block, in_block = state["epoch"], state["block"], state["in_block"]
        consumed = dict(state["consumed"])
        for _ in range(2 * len(self.blocks) + 1):
            name, length = self.blocks[block]
            if in_block < length and consumed.get(name, 0) < self.batches(name, epoch):
                draw = Draw(name, epoch, consumed.get(name, 0))
                consumed[name] = draw.batch_index + 1
                return draw, {"epoch": epoch, "block": block, "in_block": in_block + 1, "consumed": consumed}
            block, in_block = (block + 1) % len(self.blocks), 0
            if all(consumed.get(n, 0) >= self.batches(n, epoch) for n, length in self.blocks if length > 0):
                epoch, block, consumed = epoch + 1, 0, {}
        raise AssertionError("unreachable: validated blocks always yield a batch")


def stage_blocks(stages: Sequence[str], interval: int, num_options: int) -> tuple[tuple[str, int], ...]:
    """The paper's block lengths: analyze runs `num_options` times longer, one example per option."""
    return tuple((stage, interval * num_options if stage == "analyze" else interval) for stage in stages)
