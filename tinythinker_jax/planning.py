"""What a run's compiled steps need per device, known before the run: each step is lowered and compiled from
shapes alone (no parameter is allocated) on the run's mesh, and XLA's memory analysis of the executable is read.

`tinythinker plan` prints these figures for a gin-configured run (the SFT step, the DPO step and one decoding
call) and, given a device's memory, searches the largest batch whose step fits. The figures are the compiler's
for the backend it runs on: on a CPU with fake devices they estimate an accelerator's, whose compiler fuses and
lays out differently (`docs/performance.md` compares both with measured peaks).
"""

import dataclasses
import time
from typing import Any, Callable, Mapping, Optional, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tinythinker_jax import partitioning
from tinythinker_jax.data import packing
from tinythinker_jax.models import batching, decoding, t5
from tinythinker_jax.phases import optimizers
from tinythinker_jax.phases.step import LossFn, make_train_step
from tinythinker_jax.reflection import losses as reflection_losses
from tinythinker_jax.training import losses as training_losses


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """XLA's memory analysis of one compiled step, per device, and how long it took to compile.

    Attributes:
        name: The step (`sft_step`, `dpo_step`, `decode`).
        batch_size: Its rows (examples, pairs, or inputs of the decoding call).
        compile_seconds: Lowering and compiling.
        argument_bytes: Its inputs: parameters, optimizer state, batch.
        output_bytes: Its outputs.
        alias_bytes: Outputs written into donated inputs (counted once).
        temp_bytes: Activations and other buffers live only inside the step.
    """

    name: str
    batch_size: int
    compile_seconds: float
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int

    @property
    def total_bytes(self) -> int:
        """What the device holds while the step runs: its inputs, its outputs (those written into donated
        inputs counted once) and its temporaries. (XLA:CPU's own peak figure leaves the temporaries out.)"""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


@dataclasses.dataclass(frozen=True)
class StepShapes:
    """The lengths a plan compiles for (a run's widest shape buckets).

    Attributes:
        input_length: Encoder tokens per row.
        target_length: Decoder tokens per row (each of a pair's texts, for DPO).
        decode_length: Tokens a decoding call generates (the chain's limit).
        num_decodes: Samples per input in a decoding call.
        packed: Whether phase 1 packs its rows (`trainer.train.pack`): its batches then carry segment ids,
            and attention masks each row's examples apart.
    """

    input_length: int = 384
    target_length: int = 128
    decode_length: int = 200
    num_decodes: int = 1
    packed: bool = False


def _compile(name: str, batch_size: int, lower: Callable[[], Any]) -> CompiledMemory:
    started = time.time()
    compiled = lower().compile()
    seconds = time.time() - started
    stats = compiled.memory_analysis()
    return CompiledMemory(name, batch_size, seconds, stats.argument_size_in_bytes, stats.output_size_in_bytes,
                          stats.alias_size_in_bytes, stats.temp_size_in_bytes)


def _sharded(value: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)


def abstract_model(config: t5.T5Config, partitioner: partitioning.Partitioner) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graph and its state as shapes laid out on the partitioner's mesh: nothing is allocated."""
    graphdef, state = nnx.split(t5.abstract_model(config))
    return graphdef, partitioning.abstract_sharded(state, partitioner.mesh, partitioner.rules)


# A batch's arrays by name: (shape, dtype).
BatchShapes = Mapping[str, tuple[tuple[int, ...], Any]]


def _batch(partitioner: partitioning.Partitioner, shapes: BatchShapes) -> dict[str, jax.ShapeDtypeStruct]:
    return {name: _sharded(jax.ShapeDtypeStruct(shape, dtype),
                           partitioning.batch_sharding(partitioner.mesh, partitioner.rules, len(shape)))
            for name, (shape, dtype) in shapes.items()}


def _train_step(name: str, config: t5.T5Config, optimizer: optimizers.Optimizer, loss_fn: LossFn,
                batch: BatchShapes, batch_size: int,
                partitioner: partitioning.Partitioner) -> CompiledMemory:
    graphdef, state = abstract_model(config, partitioner)
    model_graph, params, rest = cast(tuple[nnx.GraphDef, nnx.State, nnx.State],
                                     nnx.split(nnx.merge(graphdef, state), nnx.Param, ...))
    # The optimizer state is laid out as the training loop lays it out.
    opt_state = jax.tree.map(_sharded, jax.eval_shape(optimizer.transform.init, params),
                             partitioning.optimizer_state_shardings(optimizer.transform, params, partitioner.mesh))
    step = make_train_step(model_graph, rest, optimizer.transform, loss_fn)
    key = jax.random.key(0)
    with partitioner.activate():
        return _compile(name, batch_size,
                        lambda: step.lower(params, opt_state, _batch(partitioner, batch), 0, key))


def sft_step(config: t5.T5Config, optimizer: optimizers.Optimizer, batch_size: int, shapes: StepShapes,
             partitioner: partitioning.Partitioner) -> CompiledMemory:
    """The phase-1 step (forward, backward, optimizer update) for `batch_size` examples."""
    rows, targets = (batch_size, shapes.input_length), (batch_size, shapes.target_length)
    batch = {"encoder_input_tokens": (rows, jnp.int32), "decoder_input_tokens": (targets, jnp.int32),
             "decoder_target_tokens": (targets, jnp.int32), "decoder_loss_weights": (targets, jnp.float32)}
    if shapes.packed:
        batch.update({packing.SEGMENT_IDS["encoder"]: (rows, jnp.int32),
                      packing.SEGMENT_IDS["decoder"]: (targets, jnp.int32)})
    return _train_step("sft_step", config, optimizer, training_losses.sft_loss, batch, batch_size, partitioner)


def dpo_step(config: t5.T5Config, optimizer: optimizers.Optimizer, batch_size: int, shapes: StepShapes,
             partitioner: partitioning.Partitioner) -> CompiledMemory:
    """The phase-2 step for `batch_size` scored pairs (each a chosen and a rejected text)."""
    rows, targets, pairs = (batch_size, shapes.input_length), (batch_size, shapes.target_length), (batch_size,)
    batch = {"encoder_input_tokens": (rows, jnp.int32), "chosen_targets": (targets, jnp.int32),
             "rejected_targets": (targets, jnp.int32), "reference_chosen": (pairs, jnp.float32),
             "reference_rejected": (pairs, jnp.float32), "pair_weights": (pairs, jnp.float32)}
    loss_fn = reflection_losses.dpo_loss_fn(beta=0.5, alpha=0.5)  # the constants change no shape
    return _train_step("dpo_step", config, optimizer, loss_fn, batch, batch_size, partitioner)


def decode_call(config: t5.T5Config, batch_size: int, shapes: StepShapes,
                partitioner: partitioning.Partitioner) -> CompiledMemory:
    """One KV-cache decoding call for `batch_size` inputs of `shapes.num_decodes` samples each."""
    graphdef, state = abstract_model(config, partitioner)
    inputs = _batch(partitioner, {"tokens": ((batch_size, shapes.input_length), jnp.int32),
                                  "ids": ((batch_size,), jnp.int32)})
    sampling = decoding.SamplingConfig(temperature=0.7) if shapes.num_decodes > 1 else decoding.SamplingConfig()
    with partitioner.activate():
        return _compile("decode", batch_size, lambda: decoding.compiled_decode.lower(
            graphdef, state, inputs["tokens"], jax.random.key(0), inputs["ids"], np.int32(shapes.decode_length),
            cache_length=batching.bucket_length(shapes.decode_length), sampling=sampling,
            num_decodes=shapes.num_decodes, eos_id=np.int32(config.eos_id)))


def largest_batch(plan: Callable[[int], CompiledMemory], device_bytes: int,
                  limit: int = 1 << 16) -> Optional[CompiledMemory]:
    """The plan of the largest batch size whose step fits in `device_bytes`, or None when even 1 does not.

    A step's memory grows about linearly with its rows (parameters and optimizer state fixed, activations per
    row), so a batch of 1 and one of 8 give the slope and each further size is where the line through the
    two nearest plans (the largest that fits and, once one does not fit, the smallest that does not) meets
    `device_bytes`: three to five compiles where XLA's figures are near linear (a scanned stack's grow a few
    percent faster beyond batch 1), instead of a dozen for a blind search. A guess from the line that fits is
    checked against the next size up, and if that fits too (a curve bending upwards) a bisection step
    follows, so the search stays within a few compiles of a bisection's.

    Args:
        plan: A batch size's plan, e.g. `functools.partial(sft_step, config, optimizer, shapes=..., ...)`.
        device_bytes: One device's memory.
        limit: The largest batch size tried.
    """
    fits = plan(1)
    if fits.total_bytes > device_bytes:
        return None
    below, too_large = fits, None  # the fitting plan before `fits`; the smallest plan that does not fit
    size, guessed_by = min(8, limit), "line"
    while fits.batch_size < size < (too_large.batch_size if too_large else limit + 1):
        trial = plan(size)
        if trial.total_bytes <= device_bytes:
            below, fits = fits, trial
        else:
            too_large = trial
        if too_large is None:  # every size so far fits: extrapolate the line through the last two
            size = min(limit, _where_line_meets(below, fits, device_bytes))
        elif fits is trial and guessed_by == "line":  # is the next size up the boundary?
            size, guessed_by = fits.batch_size + 1, "next"
        elif fits is trial and guessed_by == "next":  # the line fell short twice
            size, guessed_by = (fits.batch_size + too_large.batch_size) // 2, "bisection"
        else:
            guess = _where_line_meets(fits, too_large, device_bytes)
            size, guessed_by = min(max(guess, fits.batch_size + 1), too_large.batch_size - 1), "line"
    return fits


def _where_line_meets(a: CompiledMemory, b: CompiledMemory, device_bytes: int) -> int:
    """The batch size at which the line through plans `a` and `b` reaches `device_bytes` (from `a`, rounded
    down), or a very large size when the line does not grow."""
    per_row = (b.total_bytes - a.total_bytes) / max(b.batch_size - a.batch_size, 1)
    if per_row <= 0:
        return 1 << 62
    return a.batch_size + int((device_bytes - a.total_bytes) / per_row)
