"""The Flax T5 against PyTorch T5 (`transformers`) on tiny random models of both T5 1.0 and 1.1 flavours."""

import os

os.environ.setdefault("USE_TF", "0")

import functools
import glob

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.models.t5.modeling_t5 import T5Attention

import gin
from tinythinker_jax.models import checkpoints, dropout, hf_convert, scoring, t5, testing

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=testing.KINDS)
def converted(request, tmp_path_factory, vocab_path):
    """(PyTorch model, our model imported through a checkpoint) for one T5 flavour."""
    directory = tmp_path_factory.mktemp(request.param)
    reference = testing.save_random_hf_t5(str(directory / "hf"), request.param, vocab_path)
    hf_convert.import_hf(str(directory / "hf"), str(directory / "ckpt"))
    return reference, checkpoints.load_model(str(directory / "ckpt"))


def _batch(vocab_size: int, seed: int = 0):
    """Inputs and targets with padding of various lengths, one row padded almost entirely."""
    rng = np.random.RandomState(seed)
    inputs = rng.randint(3, vocab_size, (4, 23))
    targets = rng.randint(3, vocab_size, (4, 17))
    for row, (input_length, target_length) in enumerate([(23, 17), (15, 9), (4, 16), (11, 1)]):
        inputs[row, input_length:] = 0
        targets[row, target_length:] = 0
    return inputs, targets


@nnx.jit
def _logits(model, inputs, decoder_inputs, dropout_rng=None):
    return model(inputs, decoder_inputs, dropout_rng=dropout_rng)


def _reference_logits(reference, inputs, decoder_inputs) -> torch.Tensor:
    with torch.no_grad():
        return reference(
            input_ids=torch.tensor(inputs), attention_mask=torch.tensor(inputs != 0),
            decoder_input_ids=torch.tensor(decoder_inputs),
        ).logits


def test_relative_position_buckets_match_reference():
    relative_position = np.arange(-300, 301)[None, :] - np.arange(0, 40)[:, None]
    for bidirectional in (True, False):
        for num_buckets, max_distance in ((32, 128), (8, 20)):
            ours = t5.relative_position_buckets(
                relative_position, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
            )
            theirs = T5Attention._relative_position_bucket(
                torch.tensor(relative_position), bidirectional=bidirectional, num_buckets=num_buckets,
                max_distance=max_distance,
            )
            np.testing.assert_array_equal(ours, theirs.numpy())


def test_logits_match_pytorch(converted):
    reference, model = converted
    inputs, targets = _batch(model.config.vocab_size)
    decoder_inputs = np.asarray(scoring.shift_right(jnp.asarray(targets)))
    expected = _reference_logits(reference, inputs, decoder_inputs).numpy()
    logits = np.asarray(_logits(model, jnp.asarray(inputs), jnp.asarray(decoder_inputs)))
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    assert np.abs(logits - expected).max() < TOLERANCE


def test_sequence_log_likelihood_matches_pytorch(converted):
    reference, model = converted
    inputs, targets = _batch(model.config.vocab_size, seed=1)
    logits = _reference_logits(reference, inputs, np.asarray(scoring.shift_right(jnp.asarray(targets))))
    token_log_probs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(targets)[..., None])[..., 0]
    expected = (token_log_probs * torch.tensor(targets != 0)).sum(-1).numpy()
    ours = np.asarray(nnx.jit(scoring.sequence_log_likelihood)(model, jnp.asarray(inputs), jnp.asarray(targets)))
    assert np.abs(ours - expected).max() < TOLERANCE


def test_candidates_share_one_encoding(converted):
    _, model = converted
    inputs, targets = _batch(model.config.vocab_size, seed=2)
    candidates = jnp.stack([jnp.asarray(targets), jnp.asarray(np.roll(targets, 1, axis=0))], axis=1)
    together = nnx.jit(scoring.candidates_log_likelihood)(model, jnp.asarray(inputs), candidates)
    for k in range(2):
        one_by_one = nnx.jit(scoring.sequence_log_likelihood)(model, jnp.asarray(inputs), candidates[:, k])
        np.testing.assert_allclose(together[:, k], one_by_one, atol=TOLERANCE)


def test_encoder_output_reuse_equals_full_forward(converted):
    _, model = converted
    inputs, targets = _batch(model.config.vocab_size, seed=3)
    decoder_inputs = scoring.shift_right(jnp.asarray(targets))
    encode_then_decode = nnx.jit(lambda model, x, y: model.decode(model.encode(x), x, y))
    np.testing.assert_allclose(
        encode_then_decode(model, jnp.asarray(inputs), decoder_inputs),
        _logits(model, jnp.asarray(inputs), decoder_inputs),
        atol=1e-5,
    )


@pytest.mark.parametrize("converted", ["t5_1_1"], indirect=True)  # dropout placement is flavour-independent
def test_dropout_only_with_an_rng(converted):
    _, model = converted
    inputs, targets = _batch(model.config.vocab_size, seed=4)
    inputs, decoder_inputs = jnp.asarray(inputs), scoring.shift_right(jnp.asarray(targets))
    plain = _logits(model, inputs, decoder_inputs)
    first = _logits(model, inputs, decoder_inputs, jax.random.key(1))
    again = _logits(model, inputs, decoder_inputs, jax.random.key(1))
    other = _logits(model, inputs, decoder_inputs, jax.random.key(2))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - plain).max() > 1e-3 and np.abs(first - other).max() > 1e-3


def test_dropout_masks_behave_like_independent_bernoulli_draws():
    """The hashed masks: the right keep rate and scale, no correlation between neighbours, rows or keys."""
    shape, rate = (64, 8, 40, 50), 0.1
    ones = jnp.ones(shape)
    first = np.asarray(jax.jit(dropout.dropout, static_argnums=1)(ones, rate, jax.random.key(0)))
    again = np.asarray(jax.jit(dropout.dropout, static_argnums=1)(ones, rate, jax.random.key(0)))
    other = np.asarray(jax.jit(dropout.dropout, static_argnums=1)(ones, rate, jax.random.key(1)))
    np.testing.assert_array_equal(first, again)
    assert set(np.unique(first)) == {0.0, np.float32(1 / (1 - rate))}
    kept = first > 0
    # 1M draws: the keep rate's standard error is 3e-4, correlations' 1e-3; the bounds are 5 of those.
    assert abs(kept.mean() - (1 - rate)) < 1.5e-3
    for a, b in ((kept[..., 1:], kept[..., :-1]), (kept[1:], kept[:-1]), (kept, other > 0)):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5e-3
    bits = np.asarray(dropout.uniform_bits(jax.random.key(3), (1000, 1000)))
    bit_means = ((bits[..., None] >> np.arange(32, dtype=np.uint32)) & 1).mean(axis=(0, 1))
    assert np.all(np.abs(bit_means - 0.5) < 2.5e-3)


def test_bfloat16_compute_keeps_float32_params(converted):
    _, model = converted
    graphdef, _ = nnx.split(t5.abstract_model(model.config.replace(dtype="bfloat16")))
    bf16 = nnx.merge(graphdef, nnx.state(model))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    inputs, targets = _batch(model.config.vocab_size, seed=5)
    inputs, decoder_inputs = jnp.asarray(inputs), scoring.shift_right(jnp.asarray(targets))
    full, half = _logits(model, inputs, decoder_inputs), _logits(bf16, inputs, decoder_inputs)
    assert half.dtype == jnp.float32
    assert 0 < np.abs(full - half).max() < 0.1 * np.abs(full).max()


# Parameter counts of the published checkpoints, as `transformers` reports them.
PUBLISHED_SIZES = {"t5_1_0_small": 60_506_624, "t5_1_0_base": 222_903_552, "t5_1_1_small": 76_961_152}


@pytest.mark.parametrize("name", sorted(PUBLISHED_SIZES))
def test_named_configs_have_published_sizes(name):
    model = t5.abstract_model(t5.model_config(name))
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == PUBLISHED_SIZES[name]


def test_gin_files_select_named_configs():
    paths = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "gin", "models", "*.gin")))
    assert {os.path.basename(p)[: -len(".gin")] for p in paths} == set(t5.CONFIGS)
    for path in paths:
        gin.clear_config()
        gin.parse_config_files_and_bindings([path], ["t5.model_config.dtype = 'bfloat16'"])
        name = os.path.basename(path)[: -len(".gin")]
        assert gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn() == t5.CONFIGS[name].replace(
            dtype="bfloat16"
        )
    gin.clear_config()


def test_unknown_config_name_lists_known_ones():
    with pytest.raises(ValueError, match="t5_1_1_base"):
        t5.model_config("t5_2_0_small")


def test_config_name_names_the_shape():
    """The report names a model by its shape, whatever dtype and dropout it ran with."""
    assert t5.config_name(t5.model_config("t5_1_0_base", dtype="bfloat16", dropout_rate=0.0)) == "t5_1_0_base"
    assert t5.config_name(t5.model_config("t5_1_1_small", vocab_size=768)) == "t5_1_1_small (vocab_size 768)"
    assert t5.config_name(t5.model_config("t5_1_0_small", d_model=256)) is None


@pytest.mark.parametrize("remat,scan_layers", [("dots_saveable", False), ("full", False), ("none", True),
                                               ("dots_saveable", True), ("full", True)])
def test_memory_options_are_numerically_neutral(remat, scan_layers):
    """The SFT loss and its gradients, dropout on, are the same with the layers rematerialised and/or scanned
    (the gradients of stacked parameters compared layer by layer); the backward pass really recomputes them
    (the traced step holds a checkpoint) and a scanned stack really loops (one scan per stack)."""
    from tinythinker_jax.training import losses

    config = t5.model_config("t5_1_0_tiny", vocab_size=128)
    rng = np.random.RandomState(0)
    targets = rng.randint(3, 128, (4, 7)).astype(np.int32)
    batch = {"encoder_input_tokens": rng.randint(3, 128, (4, 10)).astype(np.int32),
             "decoder_input_tokens": np.asarray(scoring.shift_right(targets)), "decoder_target_tokens": targets,
             "decoder_loss_weights": np.ones((4, 7), np.float32)}

    def loss_and_grads(config):
        graphdef, params, rest = nnx.split(t5.create_model(config, seed=0), nnx.Param, ...)

        def loss_of(params):
            return losses.sft_loss(nnx.merge(graphdef, params, rest), batch, jax.random.key(1))[0]

        (loss, grads), jaxpr = jax.value_and_grad(loss_of)(params), jax.make_jaxpr(jax.grad(loss_of))(params)
        grads = nnx.to_pure_dict(grads)
        return loss, t5.unstack_layers(grads) if config.scan_layers else grads, str(jaxpr)

    loss, grads, _ = loss_and_grads(config)
    option_loss, option_grads, jaxpr = loss_and_grads(config.replace(remat=remat, scan_layers=scan_layers))
    if remat != "none":
        assert "checkpoint" in jaxpr or "remat" in jaxpr
    if scan_layers:
        assert jaxpr.count("scan[") >= 2
    np.testing.assert_allclose(option_loss, loss, rtol=1e-6)
    assert jax.tree.structure(option_grads) == jax.tree.structure(grads)
    for option_grad, grad in zip(jax.tree.leaves(option_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(option_grad, grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="remat='some' is not supported"):
        config.replace(remat="some")


def test_adafactor_updates_each_scanned_layer_as_an_unrolled_one():
    """Adafactor's statistics are per parameter (update clipping by RMS, scaling by the parameter's RMS), so a
    stacked layer parameter is updated layer by layer: the same updates as unrolled, where the state is plain
    optax Adafactor's (checkpoints of unscanned runs unchanged)."""
    import optax

    from tinythinker_jax.phases import optimizers

    config = t5.model_config("t5_1_0_tiny", vocab_size=128)
    transform = optimizers.create_optimizer(10, name="adafactor", schedule="constant").transform

    def updated(config):
        params = nnx.state(t5.create_model(config, seed=0), nnx.Param)
        state = transform.init(params)
        if not config.scan_layers:
            plain = optax.chain(optax.clip_by_global_norm(1.0), optax.adafactor(optax.constant_schedule(1.0)))
            assert jax.tree.structure(state) == jax.tree.structure(plain.init(params))
        for index in range(2):
            grads = jax.tree.map(lambda p, index=index: jnp.cos(3.0 * p + index), params)
            updates, state = jax.jit(transform.update)(grads, state, params)
            params = optax.apply_updates(params, updates)
        params = nnx.to_pure_dict(params)
        return t5.unstack_layers(params) if config.scan_layers else params

    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
                 updated(config.replace(scan_layers=True)), updated(config))


def test_a_scanned_decoding_step_writes_its_cache_in_place():
    """Scanned decoding carries the stacked self-attention cache and writes each layer's new position into it:
    the step's temporaries stay below the cache's size (scanned over as inputs and outputs, the cache was
    copied whole every step: 1.9x its size in temporaries)."""
    config = t5.model_config("t5_1_1_tiny", vocab_size=256, scan_layers=True)
    model = t5.create_model(config, seed=0)
    graphdef, state = nnx.split(model)
    inputs = jnp.ones((8, 16), jnp.int32)
    cache = model.init_decoding_cache(jnp.zeros((8, 16, config.d_model)), 256)

    def step(state, cache):
        return nnx.merge(graphdef, state).decode_step(jnp.ones((8,), jnp.int32), jnp.int32(3), cache, inputs)

    memory = jax.jit(step, donate_argnums=1).lower(state, cache).compile().memory_analysis()
    assert memory.temp_size_in_bytes < cache.self_key.nbytes + cache.self_value.nbytes


def test_scanned_layers_decode_and_save_like_unrolled_ones(tmp_path, vocab_path):
    """A scanned model has the unrolled one's weights (same seed), decodes the same tokens greedily and
    sampled (its KV cache stacked over layers), writes a checkpoint in the unrolled layout, and loads from
    either kind of checkpoint in either layout; `shape()` ignores the setting."""
    from tinythinker_jax.models import decoding

    config = t5.model_config("t5_1_1_tiny", vocab_size=256)
    unrolled, scanned = t5.create_model(config, seed=0), t5.create_model(config.replace(scan_layers=True), seed=0)
    assert config.replace(scan_layers=True).shape() == config.shape()
    stacked = nnx.to_pure_dict(nnx.state(scanned))
    assert stacked["decoder"]["layers"]["mlp"]["wo"].shape == (2, 128, 64)
    assert scanned.decoder.layers.mlp.wo.get_metadata()["logical_axes"] == ("layers", "mlp", "embed")
    jax.tree.map(np.testing.assert_array_equal, t5.unstack_layers(stacked), nnx.to_pure_dict(nnx.state(unrolled)))
    rng = np.random.RandomState(0)
    inputs = [list(rng.randint(3, 256, length)) + [1] for length in (9, 4, 12)]
    for sampling in (decoding.SamplingConfig(), decoding.SamplingConfig(temperature=1.0, top_k=20)):
        expected = decoding.generate(unrolled, inputs, max_decode_length=6, sampling=sampling, num_decodes=2)
        got = decoding.generate(scanned, inputs, max_decode_length=6, sampling=sampling, num_decodes=2)
        np.testing.assert_array_equal(got.tokens, expected.tokens)
        np.testing.assert_allclose(got.log_likelihood, expected.log_likelihood, rtol=1e-5)

    checkpoints.save_checkpoint(str(tmp_path / "scanned"), nnx.state(scanned), scanned.config, vocab_path)
    checkpoints.save_checkpoint(str(tmp_path / "unrolled"), nnx.state(unrolled), unrolled.config, vocab_path)
    _, saved = checkpoints.load_params_numpy(str(tmp_path / "scanned"))
    jax.tree.map(np.testing.assert_array_equal, saved, checkpoints.load_params_numpy(str(tmp_path / "unrolled"))[1])
    for source in ("scanned", "unrolled"):
        for scan_layers in (False, True):
            loaded = checkpoints.load_model(str(tmp_path / source), config=config.replace(scan_layers=scan_layers))
            assert loaded.config.scan_layers == scan_layers
            reference = scanned if scan_layers else unrolled
            jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(loaded)),
                         nnx.to_pure_dict(nnx.state(reference)))


def test_a_packed_row_gives_each_example_its_own_logits():
    """Two examples packed into one row with segment ids (the layout of `EncDecFeatureConverter(pack=True)`)
    get, token by token, the logits each has alone: attention stays within an example and the relative
    position bias is the same wherever an example sits."""
    config = t5.model_config("t5_1_1_tiny", vocab_size=128)
    model = t5.create_model(config, seed=0)
    rng = np.random.RandomState(0)
    examples = [(rng.randint(3, 128, 9), rng.randint(3, 128, 5)), (rng.randint(3, 128, 6), rng.randint(3, 128, 7))]
    packed_inputs = np.zeros((1, 20), np.int32)
    encoder_segments, decoder_segments = np.zeros((1, 20), np.int32), np.zeros((1, 14), np.int32)
    decoder_inputs = np.zeros((1, 14), np.int32)
    alone = []
    at_input, at_target = 0, 0
    for segment, (inputs, targets) in enumerate(examples, start=1):
        shifted = np.concatenate([[0], targets[:-1]])
        alone.append(_logits(model, inputs[None], shifted[None])[0])
        packed_inputs[0, at_input:at_input + len(inputs)] = inputs
        encoder_segments[0, at_input:at_input + len(inputs)] = segment
        decoder_inputs[0, at_target:at_target + len(targets)] = shifted
        decoder_segments[0, at_target:at_target + len(targets)] = segment
        at_input, at_target = at_input + len(inputs), at_target + len(targets)
    packed = nnx.jit(lambda m, *a: m(a[0], a[1], encoder_segment_ids=a[2], decoder_segment_ids=a[3]))(
        model, packed_inputs, decoder_inputs, encoder_segments, decoder_segments)[0]
    np.testing.assert_allclose(packed[:5], alone[0], atol=1e-5)
    np.testing.assert_allclose(packed[5:12], alone[1], atol=1e-5)
    with pytest.raises(ValueError, match="decoder_segment_ids need the encoder_segment_ids"):
        model(packed_inputs, decoder_inputs, decoder_segment_ids=decoder_segments)
