"""Phase 1, reasoning acquisition: SFT on the interleaved stage streams, T5X-style.

One jitted, buffer-donating step per batch; metrics leave the device only every `log_every` steps (and a
non-finite loss is caught there, before any checkpoint can be written); validation runs the full greedy
chain every cycle of blocks; SIGTERM saves and exits at a step boundary, and the same command resumes.
"""

import dataclasses
import functools
import math
import os
import signal
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio
import gin
from flax import nnx
from tqdm import tqdm

import tinythinker_tasks
from tinythinker_jax import chains, formats, partitioning
from tinythinker_jax.data import benchmarks, locations, prepare
from tinythinker_jax.models import checkpoints as model_checkpoints
from tinythinker_jax.models import t5
from tinythinker_jax.training import checkpointing, losses, metrics, optimizers, schedule, streams


def build_streams(dataset: str, stage_type: str, feature_lengths: dict[str, int], batch_size: int,
                  seed: int) -> dict[str, streams.Stream]:
    """One stream per stage of `stage_type`, in its order (which the blocks follow)."""
    return {
        stage: streams.Stream(
            streams.load_task_arrays(tinythinker_tasks.stage_task_name(dataset, stage, stage_type), feature_lengths),
            batch_size, seed=seed * 1000 + index)
        for index, stage in enumerate(formats.stages_of(stage_type))
    }


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int
    best_accuracy: Optional[float]
    best_step: Optional[int]
    preempted: bool


class _Preemption:
    """Turns SIGTERM into a request to save and stop at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def close(self):
        signal.signal(signal.SIGTERM, self._previous)


def _make_train_step(graphdef: nnx.GraphDef, rest: nnx.State, transform: optax.GradientTransformation):
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, batch, step, rng):
        dropout_rng = jax.random.fold_in(rng, step)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, rest)
            logits = model(batch["encoder_input_tokens"], batch["decoder_input_tokens"], dropout_rng=dropout_rng)
            return losses.token_cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])

        (loss, num_tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = transform.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": num_tokens}

    return train_step


def _global_batch(local: dict[str, np.ndarray], mesh, rules) -> dict[str, jax.Array]:
    sharding = partitioning.batch_sharding(mesh, rules)
    return {name: jax.make_array_from_process_local_data(sharding, array) for name, array in local.items()}


def _build_model(config: t5.T5Config, initial_checkpoint_path: Optional[str], seed: int, mesh, rules):
    if initial_checkpoint_path:
        loaded = model_checkpoints.load_config(initial_checkpoint_path)
        if dataclasses.replace(loaded, dtype=config.dtype, dropout_rate=config.dropout_rate) != config:
            raise ValueError(f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} holds {loaded}, "
                             f"but the gin model config is {config}")
        model = model_checkpoints.load_model(initial_checkpoint_path, dtype=config.dtype, mesh=mesh, rules=rules)
        # The checkpoint's own config carries inference defaults; training uses the gin one (dropout).
        model.config = config
        return model
    return partitioning.create_sharded_model(lambda: t5.create_model(config, seed=seed), mesh, rules)


class _PendingMetrics:
    """Per-step device metrics, fetched together so the step loop never waits on the device."""

    def __init__(self):
        self.rows: list[tuple[int, str, dict[str, jax.Array]]] = []
        self.started = time.time()

    def add(self, step: int, stage: str, values: dict[str, jax.Array]) -> None:
        self.rows.append((step, stage, values))

    def flush(self, batch_size: int) -> dict[str, float]:
        """Host summary of the pending steps; raises on the first non-finite loss, naming its step."""
        if not self.rows:
            return {}
        fetched = jax.device_get([values for _, _, values in self.rows])
        for (step, stage, _), values in zip(self.rows, fetched):
            if not math.isfinite(float(values["loss"])):
                raise FloatingPointError(
                    f"loss is {float(values['loss'])} at step {step} (stage {stage}): stopping without "
                    "saving; the last checkpoint in MODEL_DIR/checkpoints holds the last good state")
        elapsed = max(time.time() - self.started, 1e-9)
        summary = {
            "loss": float(np.mean([v["loss"] for v in fetched])),
            "grad_norm": float(np.mean([v["grad_norm"] for v in fetched])),
            "examples_per_second": batch_size * len(fetched) / elapsed,
            "tokens_per_second": float(sum(v["tokens"] for v in fetched)) / elapsed,
        }
        for stage in sorted({stage for _, stage, _ in self.rows}):
            summary[f"loss/{stage}"] = float(np.mean([v["loss"] for (_, s, _), v in zip(self.rows, fetched) if s == stage]))
        self.rows, self.started = [], time.time()
        return summary


def train(
    *,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: dict[str, int],
    model_config: t5.T5Config,
    batch_size: int = 64,
    train_steps: Optional[int] = None,
    epochs: int = 10,
    interval: int = 100,
    initial_checkpoint_path: Optional[str] = None,
    data_dir: Optional[str] = None,
    vocabulary_path: Optional[str] = None,
    seed: int = 0,
    mesh_data: int = -1,
    mesh_model: int = 1,
    parameter_partitioning_dims: int = 1,
    keep_checkpoints: int = 3,
    eval_every: Optional[int] = None,
    max_eval_questions: Optional[int] = None,
    log_every: int = 10,
    create_optimizer: Callable[[int], optimizers.Optimizer] = optimizers.create_optimizer,
    chain_settings: chains.ChainSettings = chains.ChainSettings(),
) -> TrainResult:
    """Trains on `tinythinker.<dataset>.<stage_type>_stages`; `train_steps` (if set) overrides `epochs`.

    Evaluation and checkpoints come every cycle of blocks (`eval_every` overrides) and at the end.
    """
    dataset, stage_type = tinythinker_tasks.parse_stage_mixture(mixture_or_task_name)
    data_dir = data_dir or locations.dataset_dir(dataset)
    if jax.process_index() == 0:
        prepare.ensure_prepared(dataset, data_dir)
    tinythinker_tasks.register_dataset(dataset, data_dir, vocabulary_path)
    mixture = seqio.get_mixture_or_task(mixture_or_task_name)
    vocabulary = mixture.output_features["targets"].vocabulary
    if vocabulary.vocab_size > model_config.vocab_size:
        raise ValueError(f"the vocabulary has {vocabulary.vocab_size} ids but the model embeds only "
                         f"{model_config.vocab_size}: raise the model config's vocab_size")

    stage_streams = build_streams(dataset, stage_type, task_feature_lengths, batch_size, seed)
    num_options = benchmarks.get_benchmark(dataset).num_options
    blocks = schedule.BlockSchedule(
        schedule.stage_blocks(list(stage_streams), interval, num_options),
        {stage: stream.num_batches for stage, stream in stage_streams.items()},
    )
    total_steps = train_steps if train_steps is not None else epochs * blocks.steps_per_epoch
    eval_every = eval_every or blocks.cycle_steps
    validation = tinythinker_tasks.load_questions(dataset, "validation")[:max_eval_questions]

    mesh = partitioning.create_mesh(data=mesh_data, model=mesh_model)
    rules = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=parameter_partitioning_dims)
    optimizer = create_optimizer(total_steps)
    checkpoints = checkpointing.TrainCheckpoints(model_dir, keep_checkpoints)
    writer = metrics.MetricsWriter(model_dir)
    preemption = _Preemption()
    try:
        with partitioning.activate(mesh, rules):
            model = _build_model(model_config, initial_checkpoint_path, seed, mesh, rules)
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)
            opt_state = jax.jit(optimizer.transform.init)(params)
            rng = jax.random.key_data(jax.random.key(seed))
            step, data_state, best = 0, schedule.BlockSchedule.initial_state(), {"accuracy": None, "step": None}
            latest = checkpoints.latest_step()
            if latest is not None:
                arrays, info = checkpoints.restore(latest, {"params": params, "opt_state": opt_state, "rng": rng})
                params, opt_state, rng = arrays["params"], arrays["opt_state"], arrays["rng"]
                step, data_state, best = info["step"], info["data_state"], info["best"]
                print(f"Resuming from {model_dir} at step {step}.")
            _write_gin_configs(model_dir)
            train_step = _make_train_step(graphdef, rest, optimizer.transform)
            runner_model = lambda: nnx.merge(graphdef, params, rest)  # noqa: E731 -- the live params, on demand

            def save(step_now: int) -> None:
                checkpoints.save(step_now, {"params": params, "opt_state": opt_state, "rng": rng},
                                 {"step": step_now, "data_state": data_state, "best": best})

            def validate(step_now: int) -> float:
                runner = chains.ChainRunner(runner_model(), vocabulary, chain_settings)
                predictions = [c[0].prediction for c in runner.run(validation, stage_type)]
                accuracy = chains.accuracy(validation, predictions)
                writer.write(step_now, {"validation/accuracy": accuracy})
                if best["accuracy"] is None or accuracy > best["accuracy"]:
                    best.update(accuracy=accuracy, step=step_now)
                    checkpointing.save_best(model_dir, nnx.state(runner_model()), model_config,
                                            vocabulary.sentencepiece_model_file,
                                            {"step": step_now, "validation_accuracy": accuracy})
                return accuracy

            pending = _PendingMetrics()
            rng_key = jax.random.wrap_key_data(rng)
            progress = tqdm(total=total_steps, initial=step, desc="sft", unit="step",
                            disable=jax.process_index() != 0, dynamic_ncols=True)
            while step < total_steps and not preemption.requested:
                draw, data_state = blocks.next(data_state)
                local = stage_streams[draw.stream].batch(
                    draw.epoch, draw.batch_index, jax.process_index(), jax.process_count())
                params, opt_state, values = train_step(
                    params, opt_state, _global_batch(local, mesh, rules), step, rng_key)
                pending.add(step, draw.stream, values)
                step += 1
                progress.update(1)
                boundary = step % eval_every == 0 or step == total_steps
                if step % log_every == 0 or boundary:
                    summary = pending.flush(batch_size)
                    summary["learning_rate"] = float(optimizer.learning_rate(step - 1))
                    writer.write(step, summary)
                    progress.set_postfix(stage=draw.stream, loss=f"{summary['loss']:.3f}",
                                         ex_s=f"{summary['examples_per_second']:.0f}")
                if boundary:
                    accuracy = validate(step)
                    progress.write(f"step {step}: validation accuracy {accuracy:.3f} "
                                   f"(best {best['accuracy']:.3f} at step {best['step']})")
                    save(step)
            if preemption.requested and step < total_steps:
                pending.flush(batch_size)
                save(step)
                progress.write(f"SIGTERM: saved step {step} to {model_dir}; run the same command to resume.")
            progress.close()
            return TrainResult(step, best["accuracy"], best["step"], preemption.requested and step < total_steps)
    finally:
        preemption.close()
        writer.close()
        checkpoints.close()


def _write_gin_configs(model_dir: str) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(gin.config_str())
    with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
        f.write(gin.operative_config_str())
