"""KV-cache decoding: greedy parity with `transformers` generate, sampling, EOS handling, compile reuse."""

import os

os.environ.setdefault("USE_TF", "0")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import torch
from flax import nnx

from tinythinker_jax import chains
from tinythinker_jax.models import batching, checkpoints, decoding, hf_convert, scoring, testing

EOS = 1
MAX_DECODE_LENGTH = 10


@pytest.fixture(scope="module", params=testing.KINDS)
def converted(request, tmp_path_factory, vocab_path):
    """(PyTorch model, our model) whose greedy outputs vary, with some rows stopping early at EOS."""
    directory = tmp_path_factory.mktemp(request.param)
    reference = testing.random_hf_t5(request.param, vocab_path, seed=2)
    if request.param == "t5_1_0":
        # With tied embeddings at their random scale the residual stream echoes the input token and greedy
        # decoding repeats the start token; a small embedding lets the layers decide, and EOS gets a chance.
        with torch.no_grad():
            reference.shared.weight *= 0.05
            reference.shared.weight[EOS] *= 2
    testing.save_hf_t5(reference, str(directory / "hf"), vocab_path)
    hf_convert.import_hf(str(directory / "hf"), str(directory / "ckpt"))
    return reference, checkpoints.load_model(str(directory / "ckpt"))


def _inputs(vocab_size: int, rows: int = 5, seed: int = 0) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    lengths = [12, 6, 12, 2, 9, 3, 7, 11][:rows]
    return [list(rng.randint(3, min(vocab_size, 200), length)) for length in lengths]


def test_greedy_matches_pytorch_generate(converted):
    reference, model = converted
    inputs = _inputs(model.config.vocab_size)
    padded = np.zeros((len(inputs), 12), np.int64)
    for row, tokens in enumerate(inputs):
        padded[row, : len(tokens)] = tokens
    with torch.no_grad():
        expected = reference.generate(
            input_ids=torch.tensor(padded), attention_mask=torch.tensor(padded != 0), do_sample=False,
            max_new_tokens=MAX_DECODE_LENGTH,
        ).numpy()[:, 1:]  # drop the decoder start token
    result = decoding.generate(model, inputs, max_decode_length=MAX_DECODE_LENGTH)
    ours = result.tokens[:, 0]
    np.testing.assert_array_equal(ours, expected)
    # The comparison only means something if rows differ and some stop early.
    assert len({tuple(row) for row in ours}) > 2
    assert (ours == EOS).any() and (ours[:, -1] != 0).any()


# Sampling does not depend on the T5 flavour: test it on one, sharing its compilations.
one_flavour = pytest.mark.parametrize("converted", ["t5_1_1"], indirect=True)
SAMPLING = decoding.SamplingConfig(temperature=1.0)


@one_flavour
def test_generated_log_likelihood_equals_scoring(converted):
    _, model = converted
    inputs = _inputs(model.config.vocab_size, rows=3)
    sampled = decoding.generate(
        model, inputs, max_decode_length=MAX_DECODE_LENGTH, sampling=SAMPLING, num_decodes=2, seed=3,
    )
    encoder_input_tokens = batching.pad_sequences(inputs, 12, len(inputs))
    for decode_index in range(2):
        targets = sampled.tokens[:, decode_index]
        # Weights by length, not by non-zero: a sample may contain the padding id before its EOS.
        lengths = [len(decoding.until_eos(row, EOS)) + (EOS in row) for row in targets]
        weights = np.arange(MAX_DECODE_LENGTH)[None, :] < np.array(lengths)[:, None]
        scores = nnx.jit(scoring.sequence_log_likelihood)(model, encoder_input_tokens, jnp.asarray(targets), weights)
        np.testing.assert_allclose(sampled.log_likelihood[:, decode_index], scores, atol=1e-4)


@one_flavour
def test_rows_stop_at_eos_and_pad_after(converted):
    _, model = converted
    inputs = _inputs(model.config.vocab_size, rows=3)

    def sample(eos_id):
        return decoding.generate(
            model, inputs, max_decode_length=MAX_DECODE_LENGTH, sampling=SAMPLING, num_decodes=2, seed=3,
            eos_id=eos_id,
        ).tokens.reshape(-1, MAX_DECODE_LENGTH)

    # A random model seldom samples its EOS; make a token it does sample mid-sequence play EOS instead.
    free_running = sample(eos_id=-1)
    eos_id = int(np.bincount(free_running[:, 2:5].ravel()).argmax())
    stopped = sample(eos_id)
    for free_row, row in zip(free_running.tolist(), stopped.tolist()):
        end = free_row.index(eos_id) + 1 if eos_id in free_row else MAX_DECODE_LENGTH
        assert row == free_row[:end] + [0] * (MAX_DECODE_LENGTH - end)
    assert (stopped == 0).any()


@one_flavour
def test_sampling_is_deterministic_per_seed_and_independent_of_batching(converted):
    _, model = converted
    inputs = _inputs(model.config.vocab_size, rows=3)

    def sample(data, seed, batch_size=32):
        return decoding.generate(
            model, data, max_decode_length=MAX_DECODE_LENGTH, sampling=SAMPLING, num_decodes=2, seed=seed,
            batch_size=batch_size,
        ).tokens

    first = sample(inputs, seed=7)
    np.testing.assert_array_equal(first, sample(inputs, seed=7))
    np.testing.assert_array_equal(first, sample(inputs, seed=7, batch_size=2))
    assert (first != sample(inputs, seed=8)).any()
    assert (first[:, 0] != first[:, 1]).any()  # the samples of one input differ


@one_flavour
def test_samples_of_one_input_equal_that_input_repeated(converted):
    """`num_decodes` samples share their input's encoder output and cross-attention keys; they must equal
    the samples of the input repeated as separate rows (the same RNG streams: row r takes sample r)."""
    _, model = converted
    inputs = _inputs(model.config.vocab_size, rows=3)
    shared = decoding.generate(model, inputs, max_decode_length=MAX_DECODE_LENGTH, sampling=SAMPLING,
                               num_decodes=3, seed=5)
    repeated = decoding.generate(model, [row for row in inputs for _ in range(3)],
                                 max_decode_length=MAX_DECODE_LENGTH, sampling=SAMPLING, seed=5)
    np.testing.assert_array_equal(shared.tokens.reshape(9, -1), repeated.tokens[:, 0])
    np.testing.assert_allclose(shared.log_likelihood.reshape(9), repeated.log_likelihood[:, 0], rtol=1e-5)


@one_flavour
def test_chain_runner_gives_each_sampled_request_its_own_sample(converted, vocab_path):
    """Repeated sampled prompts are decoded as samples of one input. With uneven repeats (3 and 2) the
    least-asked count sets the samples per input, and the third request gets a second input."""
    _, model = converted
    vocabulary = seqio.SentencePieceVocabulary(vocab_path)
    runner = chains.ChainRunner(model, vocabulary, chains.ChainSettings(max_input_length=16))
    first, second = "the first prompt", "another"
    outputs = runner._generate([first, second, first, second, first], SAMPLING, MAX_DECODE_LENGTH, seed=4,
                               bar=chains.tqdm(disable=True))
    expected = decoding.generate(model, [runner._encode(t) for t in (first, first, second)],
                                 max_decode_length=MAX_DECODE_LENGTH, sampling=SAMPLING, num_decodes=2, seed=4)
    texts = [[vocabulary.decode(decoding.until_eos(row, EOS)) for row in rows] for rows in expected.tokens]
    assert outputs == [texts[0][0], texts[2][0], texts[0][1], texts[2][1], texts[1][0]]
    assert len({outputs[0], outputs[2], outputs[4]}) == 3


@one_flavour
def test_top_k_1_tiny_top_p_and_tiny_temperature_are_greedy(converted):
    _, model = converted
    inputs = _inputs(model.config.vocab_size)
    greedy = decoding.generate(model, inputs, max_decode_length=MAX_DECODE_LENGTH).tokens
    for sampling in (decoding.SamplingConfig(temperature=1.5, top_k=1), decoding.SamplingConfig(1.5, top_p=1e-6),
                     decoding.SamplingConfig(temperature=1e-12, top_p=0.9)):
        sampled = decoding.generate(model, inputs, max_decode_length=MAX_DECODE_LENGTH, sampling=sampling).tokens
        np.testing.assert_array_equal(sampled, greedy)


def test_candidates_are_the_top_k_then_the_top_p_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))

    def kept(**settings):
        candidate_logits, ids = decoding._candidates(logits, decoding.SamplingConfig(1.0, **settings))
        ids = np.arange(4)[None] if ids is None else np.asarray(ids)
        return sorted(ids[np.isfinite(np.asarray(candidate_logits))].tolist())

    assert kept(top_k=2) == [0, 2]
    assert kept(top_p=0.5) == [0]
    assert kept(top_p=0.75) == [0, 2]
    assert kept(top_p=0.85) == [0, 2, 3]
    assert kept(top_k=3, top_p=0.99) == [0, 2, 3]
    assert kept(top_k=3, top_p=0.6) == [0, 2]
    assert kept(top_p=1e-9) == [0]


@one_flavour
def test_one_compilation_per_shape_bucket(converted):
    _, model = converted
    inputs = _inputs(model.config.vocab_size, rows=8)
    decoding.generate(model, inputs[:3], max_decode_length=7)
    compiled = decoding.compiled_decode._cache_size()
    # Batches of 3 and 4, input lengths 12 and 11, 7 and 8 steps: all the same buckets.
    decoding.generate(model, inputs[4:8], max_decode_length=8)
    decoding.generate(model, [inputs[0][:11]] * 3, max_decode_length=7)
    decoding.generate(model, inputs[:3], max_decode_length=np.int64(7), eos_id=np.int64(model.config.eos_id))
    assert decoding.compiled_decode._cache_size() == compiled


def test_max_length_caps_the_length_bucket():
    """Inputs cut at 200 tokens pad to 200, not to the 256 bucket; shorter ones keep their bucket."""
    assert batching.bucketed([[5] * 200], max_length=200).shape == (1, 200)
    assert batching.bucketed([[5] * 200]).shape == (1, 256)
    assert batching.bucketed([[5] * 100] * 3, max_length=200).shape == (4, 128)
    with pytest.raises(ValueError, match="longer than max_length=200"):
        batching.bucketed([[5] * 201], max_length=200)


def test_batches_by_length_cover_every_index_once():
    lengths = [5, 1, 4, 1, 3]
    assert list(batching.by_length(len(lengths), lengths.__getitem__, 2)) == [[1, 3], [4, 2], [0]]


@one_flavour
def test_decode_is_a_pure_jittable_function(converted):
    """The trainer calls `decode` inside its own jit, on batches it has already padded."""
    _, model = converted
    inputs = _inputs(model.config.vocab_size, rows=2)
    padded = np.zeros((2, 12), np.int32)
    for row, tokens in enumerate(inputs):
        padded[row, : len(tokens)] = tokens

    @nnx.jit(static_argnames=("cache_length",))
    def greedy(model, tokens, cache_length):
        return decoding.decode(model, tokens, jax.random.key(0), jnp.arange(2), 6, cache_length=cache_length)

    np.testing.assert_array_equal(
        greedy(model, padded, cache_length=8).tokens[:, 0, :6],
        decoding.generate(model, inputs, max_decode_length=6).tokens[:, 0],
    )


def test_invalid_sampling_settings_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        decoding.SamplingConfig(temperature=1.0, top_p=0.0)
