"""Sharded equals unsharded: the model on 8 fake CPU devices laid out data x model, with and without
FSDP-like parameter sharding, against the same model on one device.

The fake devices only exist if XLA_FLAGS is set before JAX starts, so the comparison runs in a subprocess.
"""

import json
import os
import subprocess
import sys
import textwrap

from jax.sharding import PartitionSpec as P

from tinythinker_jax import partitioning

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMPARISON = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from tinythinker_jax import partitioning
    from tinythinker_jax.models import decoding, scoring, t5

    assert jax.device_count() == 8, jax.devices()
    config = t5.model_config("t5_1_1_tiny", vocab_size=256, d_model=32, d_kv=8, d_ff=64)
    graphdef, state = nnx.split(t5.abstract_model(config))
    rng = np.random.RandomState(0)
    # Weights of the usual 1/sqrt(fan_in) scale, drawn with numpy: JAX's init would compile per parameter.
    state = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, x.shape[0] ** -0.5, x.shape).astype(np.float32)), state)
    inputs = rng.randint(3, 256, (8, 12)).astype(np.int32)
    inputs[1, 5:] = 0
    targets = rng.randint(3, 256, (8, 9)).astype(np.int32)
    targets[2, 4:] = 0
    input_lists = [list(row[row != 0]) for row in inputs[:6]]

    @nnx.jit
    def logits_and_scores(model, inputs, targets):
        logits = model(inputs, scoring.shift_right(targets))
        return logits, scoring.sequence_log_likelihood(model, inputs, targets)

    def spec(x):
        # PartitionSpec drops trailing Nones; spell out one entry per array axis.
        return list(x.sharding.spec) + [None] * (x.ndim - len(x.sharding.spec))

    def run(model, sample):
        logits, scores = logits_and_scores(model, inputs, targets)
        greedy = decoding.generate(model, input_lists, max_decode_length=8).tokens
        out = {"logits": np.asarray(logits), "scores": np.asarray(scores), "greedy": greedy}
        if hasattr(logits.sharding, "spec"):
            out["logits_spec"] = spec(logits)
        if sample:
            out["sampled"] = decoding.generate(
                model, input_lists, max_decode_length=8, num_decodes=2, seed=5,
                sampling=decoding.SamplingConfig(temperature=1.0, top_k=20)).tokens
        return out

    baseline = run(nnx.merge(graphdef, state), sample=True)
    report = {}
    for data, model_axis, parameter_dims in ((4, 2, 1), (2, 4, 2)):
        mesh = partitioning.create_mesh(data=data, model=model_axis)
        rules = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=parameter_dims)
        with partitioning.activate(mesh, rules):
            model = partitioning.shard_model(nnx.merge(graphdef, jax.tree.map(jnp.copy, state)), mesh, rules)
            sharded = run(model, sample=parameter_dims == 1)
        report[f"{data}x{model_axis}"] = {
            "embedding_spec": spec(model.token_embedder[...]),
            "wi_spec": spec(model.encoder.layers[0].mlp.wi_0[...]),
            "logits_spec": sharded["logits_spec"],
            "logits_diff": float(np.abs(sharded["logits"] - baseline["logits"]).max()),
            "scores_diff": float(np.abs(sharded["scores"] - baseline["scores"]).max()),
            "greedy_equal": bool((sharded["greedy"] == baseline["greedy"]).all()),
            "sampled_equal": bool((sharded["sampled"] == baseline["sampled"]).all()) if "sampled" in sharded else None,
        }
    report["greedy_distinct_rows"] = len({tuple(r) for r in baseline["greedy"][:, 0].tolist()})
    print("REPORT" + json.dumps(report))
    """
)


def on_eight_devices(script: str) -> dict:
    """The JSON report `script` prints after "REPORT", run in a process with 8 fake CPU devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.split("REPORT", 1)[1])


def test_sharded_equals_unsharded():
    report = on_eight_devices(COMPARISON)
    assert report["greedy_distinct_rows"] > 1

    data_model = report["4x2"]
    assert data_model["embedding_spec"] == ["model", None]
    assert data_model["wi_spec"] == [None, "model"]
    assert data_model["logits_spec"] == ["data", None, "model"]
    assert data_model["sampled_equal"]

    fsdp = report["2x4"]
    assert fsdp["embedding_spec"] == ["model", "data"]
    assert fsdp["wi_spec"] == ["data", "model"]

    for layout in (data_model, fsdp):
        assert layout["logits_diff"] < 1e-5 and layout["scores_diff"] < 1e-4, report
        assert layout["greedy_equal"], report


def test_rules_give_each_mesh_axis_to_one_array_axis():
    rules = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2)
    assert partitioning.logical_to_mesh_axes(("embed", "mlp"), rules) == P("data", "model")
    # Activations keep `data` for the batch; their embed axis falls back to replication.
    assert partitioning.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P("data", None, None)
    assert partitioning.logical_to_mesh_axes(("heads", "kv"), partitioning.standard_logical_axis_rules()) == P(
        "model", None
    )
    with_activations = partitioning.standard_logical_axis_rules(activation_partitioning_dims=2)
    assert partitioning.logical_to_mesh_axes(("batch", "length", "embed"), with_activations) == P(
        "data", None, "model"
    )


def test_mesh_shape_must_use_every_device():
    import jax
    import pytest

    assert partitioning.create_mesh().shape == {"data": jax.device_count(), "model": 1}
    with pytest.raises(ValueError, match="does not use all"):
        partitioning.create_mesh(data=jax.device_count() + 1, model=1)


def test_the_partitioner_makes_its_mesh_on_first_use_and_gives_each_process_its_rows(monkeypatch):
    """Gin builds the partitioner while it parses, before a multi-host run has joined its processes: nothing
    may touch a device then. Each process feeds an equal, disjoint share of a global batch, in order."""
    import jax
    import pytest

    partitioner = partitioning.Partitioner(data=-1, model=1)
    assert "mesh" not in vars(partitioner)
    assert partitioner.mesh.shape == {"data": jax.device_count(), "model": 1} and "mesh" in vars(partitioner)
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    shares = []
    for index in range(4):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        shares.append(partitioner.local_rows(32))
    assert shares == [slice(0, 8), slice(8, 16), slice(16, 24), slice(24, 32)]
    with pytest.raises(ValueError, match="a batch of 30 rows is not divisible by 4 processes"):
        partitioner.local_rows(30)


REMAT_COMPARISON = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    from flax import nnx
    from tinythinker_jax import partitioning
    from tinythinker_jax.models import t5
    from tinythinker_jax.training import losses

    config = t5.model_config("t5_1_1_tiny", vocab_size=256, d_model=32, d_kv=8, d_ff=64)  # dropout 0.1
    rng = np.random.RandomState(0)
    targets = rng.randint(3, 256, (8, 9)).astype(np.int32)
    batch = {"encoder_input_tokens": rng.randint(3, 256, (8, 12)).astype(np.int32),
             "decoder_input_tokens": np.concatenate([np.zeros((8, 1), np.int32), targets[:, :-1]], axis=1),
             "decoder_target_tokens": targets, "decoder_loss_weights": (targets > 0).astype(np.float32)}

    def loss_and_grads(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        @jax.jit
        def run(params, batch):
            def loss_of(params):
                return losses.sft_loss(nnx.merge(graphdef, params, rest), batch, jax.random.key(3))[0]
            return jax.value_and_grad(loss_of)(params)

        loss, grads = run(params, batch)
        grads = nnx.to_pure_dict(grads)
        if model.config.scan_layers:
            grads = t5.unstack_layers(grads)
        return float(loss), [np.asarray(g) for g in jax.tree.leaves(grads)], str(jax.make_jaxpr(run)(params, batch))

    base_loss, base_grads, _ = loss_and_grads(t5.create_model(config, seed=0))
    partitioner = partitioning.Partitioner(data=2, model=4, parameter_partitioning_dims=2)
    report = {}
    options = [(remat, False) for remat in t5.REMAT_POLICIES] + [("none", True), ("full", True)]
    for remat, scan_layers in options:
        with partitioner.activate():
            model = partitioner.create_model(
                lambda: t5.create_model(config.replace(remat=remat, scan_layers=scan_layers), seed=0))
            loss, grads, text = loss_and_grads(model)
        if scan_layers:
            spec = model.decoder.layers.mlp.wi_0[...].sharding.spec
            report["scanned_wi_spec"] = list(spec) + [None] * (3 - len(spec))
        report[f"{remat}, scan_layers={scan_layers}"] = {"loss_diff": abs(loss - base_loss),
                         "grad_diff": max(float(np.abs(g - b).max()) for g, b in zip(grads, base_grads)),
                         "grad_scale": max(float(np.abs(b).max()) for b in base_grads),
                         "rematerialised": "remat" in text or "checkpoint" in text}
    print("REPORT" + json.dumps(report))
    """
)


def test_memory_options_are_numerically_neutral_on_a_sharded_mesh():
    """Loss and gradients of the SFT step with dropout, for every remat policy and with scanned layers, with
    the parameters sharded over 2 x 4 fake devices (FSDP; a stacked parameter's layer axis unsplit), equal
    the unsharded, unrolled model's without remat."""
    report = on_eight_devices(REMAT_COMPARISON)
    assert report.pop("scanned_wi_spec") == [None, "data", "model"]
    assert set(report) == {"none, scan_layers=False", "dots_saveable, scan_layers=False",
                           "full, scan_layers=False", "none, scan_layers=True", "full, scan_layers=True"}
    for remat, result in report.items():
        assert result["loss_diff"] < 1e-5 and result["grad_diff"] < 1e-5 * result["grad_scale"], (remat, result)
        if not remat.startswith("none"):
            assert result["rematerialised"], remat


ADAFACTOR_COMPARISON = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    from flax import nnx
    from tinythinker_jax import partitioning
    from tinythinker_jax.models import t5
    from tinythinker_jax.phases import optimizers
    from tinythinker_jax.phases.step import make_train_step
    from tinythinker_jax.training import losses

    config = t5.model_config("t5_1_1_tiny", vocab_size=256, d_model=32, d_kv=8, d_ff=64)
    rng = np.random.RandomState(0)
    targets = rng.randint(3, 256, (8, 9)).astype(np.int32)
    batch = {"encoder_input_tokens": rng.randint(3, 256, (8, 12)).astype(np.int32),
             "decoder_input_tokens": np.concatenate([np.zeros((8, 1), np.int32), targets[:, :-1]], axis=1),
             "decoder_target_tokens": targets, "decoder_loss_weights": (targets > 0).astype(np.float32)}
    optimizer = optimizers.create_optimizer(10, name="adafactor", learning_rate=1e-2, schedule="constant")

    def train(partitioner, scan_layers):
        with partitioner.activate():
            model = partitioner.create_model(lambda: t5.create_model(config.replace(scan_layers=scan_layers), seed=0))
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)
            opt_state = jax.jit(optimizer.transform.init, out_shardings=partitioning.optimizer_state_shardings(
                optimizer.transform, params, partitioner.mesh))(params)
            step = make_train_step(graphdef, rest, optimizer.transform, losses.sft_loss)
            for index in range(3):
                params, opt_state, _ = step(params, opt_state, partitioner.global_batch(batch), index,
                                            jax.random.key(0))
            params = nnx.to_pure_dict(params)
            split_state = sum(any(spec is not None for spec in leaf.sharding.spec)
                              for leaf in jax.tree.leaves(opt_state))
        return [np.asarray(p) for p in jax.tree.leaves(t5.unstack_layers(params) if scan_layers else params)], \
            split_state

    base, _ = train(partitioning.Partitioner(), False)
    sharded, split_state = train(partitioning.Partitioner(data=2, model=4, parameter_partitioning_dims=2), True)
    print("REPORT" + json.dumps({"param_diff": max(float(np.abs(a - b).max()) for a, b in zip(sharded, base)),
                                 "split_state_leaves": split_state}))
    """
)


def test_adafactor_trains_scanned_layers_on_a_sharded_mesh_like_unrolled_ones_on_one_device():
    """Three Adafactor steps (its update clipping and parameter scaling are per parameter, so a stack of
    layers is updated layer by layer) with scanned layers on 2 x 4 FSDP, the optimizer state laid out like
    the parameters, leave the parameters the unrolled model's one-device run leaves."""
    report = on_eight_devices(ADAFACTOR_COMPARISON)
    assert report["param_diff"] < 1e-5, report
    assert report["split_state_leaves"] > 0, report  # the unfactored statistics of sharded parameters
