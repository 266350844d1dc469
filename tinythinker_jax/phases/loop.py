"""The training loop both phases share: jitted steps over interleaved streams, periodic validation, the
best model kept, Orbax checkpoints, SIGTERM handling.

One jitted, buffer-donating step per batch; metrics leave the device only every `log_every` steps (and a
non-finite loss or gradient norm is caught there, before any checkpoint can be written); validation runs
at every `eval_every` steps and at the end; SIGTERM saves and exits at a step boundary (with several
processes, the next log step, in all of them), and the same command resumes at the same step and the same
next batch.
"""

import dataclasses
import math
import os
import signal
import time
from typing import Any, Callable, Mapping, Optional, cast

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from tinythinker_jax import partitioning
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import checkpoints as model_checkpoints
from tinythinker_jax.models.t5 import T5Config, T5Transformer
from tinythinker_jax.phases import metrics, optimizers, schedule, streams, train_checkpoints
from tinythinker_jax.phases.step import LossFn, make_train_step

# XLA's status code for a failed device allocation.
OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"
# Device metrics that count (summed over steps into rates), not measure (averaged).
COUNTS = ("tokens", "examples", "rows")


@dataclasses.dataclass(frozen=True)
class LoopResult:
    """Where `Loop.run` stopped: the steps done, the best validation and whether SIGTERM stopped it."""

    step: int
    best_accuracy: Optional[float]
    best_step: Optional[int]
    preempted: bool


class Preemption:
    """Turns SIGTERM into a request to save and stop at a step boundary every process agrees on."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def stop_now(self, at_log_step: bool) -> bool:
        """One process stops at once. Several stop together, since every save is collective: at a log step
        (the same steps in every process), all of them when any was signalled."""
        if jax.process_count() == 1:
            return self.requested
        if not at_log_step:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))

    def close(self):
        signal.signal(signal.SIGTERM, self._previous)


class PendingMetrics:
    """Per-step device metrics, fetched together so the step loop never waits on the device."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, dict[str, jax.Array]]] = []
        self.started = time.time()

    def add(self, step: int, stage: str, values: dict[str, jax.Array]) -> None:
        """`step`: the number of steps done with this one, as metrics rows and checkpoints count them."""
        self.rows.append((step, stage, values))

    def flush(self, batch_size: int) -> dict[str, float]:
        """Means of the pending steps' metrics (and loss per stage); raises on the first non-finite loss or
        gradient norm (a finite loss can still come with an infinite gradient, which makes the update NaN).

        Counts (`tokens`; a packed batch's `examples` and `rows`) are summed into rates instead: examples
        per second counts the examples of packed rows, and `examples_per_row` is their mean per row."""
        if not self.rows:
            return {}
        fetched = jax.device_get([values for _, _, values in self.rows])
        for (step, stage, _), values in zip(self.rows, fetched):
            for name in ("loss", "grad_norm"):
                if not math.isfinite(float(values[name])):
                    raise FloatingPointError(
                        f"{name} is {float(values[name])} at step {step} (stage {stage}): stopping without "
                        "saving; the last checkpoint in its checkpoints/ directory holds the last good state")
        elapsed = max(time.time() - self.started, 1e-9)
        totals = {name: float(sum(v[name] for v in fetched)) for name in COUNTS if name in fetched[0]}
        summary = {name: float(np.mean([v[name] for v in fetched])) for name in fetched[0] if name not in COUNTS}
        summary["examples_per_second"] = totals.get("examples", batch_size * len(fetched)) / elapsed
        if "tokens" in totals:
            summary["tokens_per_second"] = totals["tokens"] / elapsed
        if "rows" in totals:
            summary["examples_per_row"] = totals["examples"] / max(totals["rows"], 1.0)
        for stage in sorted({stage for _, stage, _ in self.rows}):
            losses = [v["loss"] for (_, s, _), v in zip(self.rows, fetched) if s == stage]
            summary[f"loss/{stage}"] = float(np.mean(losses))
        self.rows, self.started = [], time.time()
        return summary


@dataclasses.dataclass
class Loop:
    """The training loop of both phases: what a run trains on and how it is judged; `run` does the rest.

    Attributes:
        model_dir: Where checkpoints, `best/`, metrics and TensorBoard events go.
        name: The run's name in the progress bar and messages (`sft`, `reflect 1`).
        model: The model to train (its parameters already on the partitioner's mesh).
        model_config: Saved with the best model.
        vocab_path: The data's SentencePiece model, saved with the best model.
        optimizer: The update rule and its learning-rate schedule.
        loss_fn: (model, batch, dropout rng) -> (loss, metrics).
        batch_streams: One batch stream per stage (or pair set), by name.
        blocks: Which stream each step draws from, and the epoch and batch it takes.
        total_steps: Steps in all.
        eval_every: Steps between validations (one also comes at the end).
        validate: The validation accuracy of a model; the best model is the one it ranks highest.
        partitioner: The mesh the model lives on, and how batches reach it.
        batch_size: Rows per step (for the examples-per-second figure and messages).
        seed: The dropout seed.
        keep_checkpoints: Training checkpoints kept.
        log_every: Steps between metric fetches.
    """

    model_dir: str
    name: str  # for the progress bar and messages
    model: T5Transformer
    model_config: T5Config  # saved with the best model
    vocab_path: str  # saved with the best model
    optimizer: optimizers.Optimizer
    loss_fn: LossFn
    batch_streams: Mapping[str, streams.Stream]
    blocks: schedule.BlockSchedule
    total_steps: int
    eval_every: int
    validate: Callable[[T5Transformer], float]  # validation accuracy of a model
    partitioner: partitioning.Partitioner
    batch_size: int
    seed: int = 0
    keep_checkpoints: int = 3
    log_every: int = 10

    def run(self) -> LoopResult:
        """Trains from the latest intact checkpoint (or the start) to `total_steps`, or until SIGTERM.

        Returns:
            The steps done, the best validation accuracy and its step, and whether SIGTERM stopped it.

        Raises:
            FloatingPointError: At the first non-finite loss or gradient norm (nothing is saved).
            UserError: When a device runs out of memory.
        """
        checkpoints = train_checkpoints.TrainCheckpoints(self.model_dir, self.keep_checkpoints)
        writer = metrics.MetricsWriter(self.model_dir)
        preemption = Preemption()
        try:
            return self._run(checkpoints, writer, preemption)
        except jax.errors.JaxRuntimeError as e:
            if OUT_OF_MEMORY not in str(e):
                raise
            raise UserError(
                f"{self.name}: a device ran out of memory with {self.batch_size} rows per step ({_first_line(e)}): "
                "lower the batch size (or the chains' batch size, chains.ChainSettings.batch_size, if validation "
                "ran out), or shard the parameters over more devices (MESH_MODEL, PARAMETER_PARTITIONING_DIMS)") from e
        finally:
            preemption.close()
            writer.close()
            checkpoints.close()

    def _check_same_vocabulary(self) -> None:
        """A resumed run must read its data with the vocabulary it started with, which its best model keeps."""
        best = train_checkpoints.best_dir(self.model_dir)
        if os.path.isdir(best):
            model_checkpoints.check_checkpoint_vocabulary(best, self.vocab_path, "the vocabulary (VOCABULARY_PATH)")

    def _data_layout(self) -> dict[str, dict[str, Any]]:
        return {name: stream.layout() for name, stream in self.batch_streams.items()}

    def _check_same_data_layout(self, saved: Optional[dict[str, Any]], step: int) -> None:
        """A checkpoint's data position means the same examples only under the batching it was saved with
        (checkpoints from before the layout was recorded are taken as they are)."""
        if saved is None or saved == self._data_layout():
            return
        changes = [f"{name}: {saved.get(name)} -> {layout}" for name, layout in self._data_layout().items()
                   if saved.get(name) != layout]
        changes += [f"{name}: {layout} -> none" for name, layout in saved.items() if name not in self.batch_streams]
        raise UserError(f"{self.name}: the checkpoint at step {step} in {self.model_dir} was saved under another "
                        f"batching of the data, so its data position would name other examples "
                        f"({'; '.join(changes)}): resume with the batch size, packing and seed it started with, or "
                        f"start again in a new MODEL_DIR")

    def _run(self, checkpoints, writer, preemption) -> LoopResult:
        # Two filters split off exactly two states, which flax's variadic return annotation cannot say.
        graphdef, params, rest = cast(tuple[nnx.GraphDef, nnx.State, nnx.State], nnx.split(self.model, nnx.Param, ...))
        opt_state = jax.jit(self.optimizer.transform.init, out_shardings=partitioning.optimizer_state_shardings(
            self.optimizer.transform, params, self.partitioner.mesh))(params)
        rng = jax.random.key_data(jax.random.key(self.seed))
        best: dict[str, Any]  # the best validation's accuracy (a float) and step (an int); None until one ran
        step, data_state, best = 0, schedule.BlockSchedule.initial_state(), {"accuracy": None, "step": None}
        restored = checkpoints.restore_latest({"params": params, "opt_state": opt_state, "rng": rng})
        if restored is not None:
            arrays, info = restored
            params, opt_state, rng = arrays["params"], arrays["opt_state"], arrays["rng"]
            step, data_state, best = info["step"], info["data_state"], info["best"]
            self._check_same_vocabulary()
            self._check_same_data_layout(info.get("data_layout"), step)
            print(f"Resuming {self.name} from {self.model_dir} at step {step}.")
        train_step = make_train_step(graphdef, rest, self.optimizer.transform, self.loss_fn)

        def save(step_now: int) -> None:
            checkpoints.save(step_now, {"params": params, "opt_state": opt_state, "rng": rng},
                             {"step": step_now, "data_state": data_state, "best": best,
                              "data_layout": self._data_layout()})

        def validate(step_now: int) -> float:
            model = nnx.merge(graphdef, params, rest)
            accuracy = self.validate(model)
            writer.write(step_now, {"validation/accuracy": accuracy})
            if best["accuracy"] is None or accuracy > best["accuracy"]:
                best.update(accuracy=accuracy, step=step_now)
                train_checkpoints.save_best(self.model_dir, nnx.state(model), self.model_config, self.vocab_path,
                                        {"step": step_now, "validation_accuracy": accuracy})
            return accuracy

        pending = PendingMetrics()

        def log(step_now: int) -> dict[str, float]:
            summary = pending.flush(self.batch_size)
            if summary:
                summary["learning_rate"] = float(self.optimizer.learning_rate(step_now - 1))
                writer.write(step_now, summary)
            return summary

        rng_key = jax.random.wrap_key_data(rng)
        progress = tqdm(total=self.total_steps, initial=step, desc=self.name, unit="step",
                        disable=jax.process_index() != 0, dynamic_ncols=True)
        stop = False
        while step < self.total_steps and not stop:
            draw, data_state = self.blocks.next(data_state)
            local = self.batch_streams[draw.stream].batch(draw.epoch, draw.batch_index,
                                                          self.partitioner.local_rows(self.batch_size))
            params, opt_state, values = train_step(
                params, opt_state, self.partitioner.global_batch(local), step, rng_key)
            step += 1
            pending.add(step, draw.stream, values)
            progress.update(1)
            boundary = step % self.eval_every == 0 or step == self.total_steps
            at_log_step = step % self.log_every == 0 or boundary
            if at_log_step:
                summary = log(step)
                progress.set_postfix(stage=draw.stream, loss=f"{summary['loss']:.3f}",
                                     ex_s=f"{summary['examples_per_second']:.0f}")
            if boundary:
                accuracy = validate(step)
                progress.write(f"{self.name} step {step}: validation accuracy {accuracy:.3f} "
                               f"(best {best['accuracy']:.3f} at step {best['step']})")
                save(step)
            stop = preemption.stop_now(at_log_step)
        preempted = stop and step < self.total_steps
        if preempted:
            log(step)
            save(step)
            progress.write(f"SIGTERM: saved step {step} to {self.model_dir}; run the same command to resume.")
        progress.close()
        return LoopResult(step, best["accuracy"], best["step"], preempted)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]
