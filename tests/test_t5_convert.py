"""HF import/export through checkpoints, the errors a user meets, and the convert/score/generate commands."""

import os

os.environ.setdefault("USE_TF", "0")

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from tinythinker_jax import cli, partitioning
from tinythinker_jax.models import checkpoints, decoding, hf_convert, scoring, testing


@pytest.fixture(scope="module", params=testing.KINDS)
def hf_dir(request, tmp_path_factory, vocab_path):
    directory = str(tmp_path_factory.mktemp(request.param) / "hf")
    testing.save_random_hf_t5(directory, request.param, vocab_path)
    return directory


def _flat_params(ckpt_dir):
    return traverse_util.flatten_dict(checkpoints.load_params_numpy(ckpt_dir)[1])


def test_export_then_import_is_lossless(hf_dir, tmp_path):
    hf_convert.import_hf(hf_dir, str(tmp_path / "ckpt"))
    hf_convert.export_hf(str(tmp_path / "ckpt"), str(tmp_path / "exported"))
    hf_convert.import_hf(str(tmp_path / "exported"), str(tmp_path / "again"))

    first, second = _flat_params(tmp_path / "ckpt"), _flat_params(tmp_path / "again")
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=str(name))
    original = load_file(os.path.join(hf_dir, "model.safetensors"))
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert exported.keys() == original.keys()
    for name in original:
        np.testing.assert_array_equal(original[name], exported[name], err_msg=name)
    assert checkpoints.load_config(tmp_path / "ckpt") == checkpoints.load_config(tmp_path / "again")


def test_export_loads_in_transformers(hf_dir, tmp_path):
    hf_convert.import_hf(hf_dir, str(tmp_path / "ckpt"))
    hf_convert.export_hf(str(tmp_path / "ckpt"), str(tmp_path / "exported"))
    exported, info = transformers.T5ForConditionalGeneration.from_pretrained(
        str(tmp_path / "exported"), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    original = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir)
    inputs = torch.tensor([[5, 9, 13, 1]])
    with torch.no_grad():
        expected = original(input_ids=inputs, decoder_input_ids=inputs).logits
        actual = exported.eval()(input_ids=inputs, decoder_input_ids=inputs).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_checkpoint_restores_onto_a_mesh(hf_dir, tmp_path):
    hf_convert.import_hf(hf_dir, str(tmp_path / "ckpt"))
    mesh = partitioning.create_mesh()
    rules = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2)
    model = checkpoints.load_model(str(tmp_path / "ckpt"), mesh=mesh, rules=rules)
    embedding = model.token_embedder[...]
    assert embedding.sharding == NamedSharding(mesh, P("model", "data"))
    np.testing.assert_array_equal(embedding, _flat_params(tmp_path / "ckpt")[("token_embedder",)])


def test_checkpoint_disagreeing_with_its_config_is_named(hf_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    hf_convert.import_hf(hf_dir, str(ckpt))
    config = json.loads((ckpt / checkpoints.CONFIG_FILE).read_text())
    config["num_encoder_layers"] = 3
    (ckpt / checkpoints.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(checkpoints.CheckpointError, match="missing encoder/layers/2/attention/key"):
        checkpoints.load_model(str(ckpt))


def test_pytorch_bin_weights_import(vocab_path, tmp_path):
    reference = testing.random_hf_t5("t5_1_1", vocab_path, seed=1)
    reference.save_pretrained(str(tmp_path / "hf"), safe_serialization=False)
    shutil.copyfile(vocab_path, tmp_path / "hf" / "spiece.model")
    assert os.path.exists(tmp_path / "hf" / "pytorch_model.bin")
    hf_convert.import_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    params = _flat_params(tmp_path / "ckpt")
    np.testing.assert_array_equal(params[("logits_dense",)], reference.lm_head.weight.detach().numpy().T)


def _edit_weights(hf_dir, tmp_path, edit):
    edited = str(tmp_path / "edited")
    shutil.copytree(hf_dir, edited)
    tensors = load_file(os.path.join(edited, "model.safetensors"))
    edit(tensors)
    save_file(tensors, os.path.join(edited, "model.safetensors"), metadata={"format": "pt"})
    return edited


def test_missing_and_mismatched_tensors_are_named(hf_dir, tmp_path):
    def damage(tensors):
        del tensors["encoder.block.1.layer.0.SelfAttention.k.weight"]
        tensors["decoder.final_layer_norm.weight"] = np.ones(7, np.float32)

    with pytest.raises(hf_convert.ConversionError) as error:
        hf_convert.import_hf(_edit_weights(hf_dir, tmp_path, damage), str(tmp_path / "ckpt"))
    assert "missing tensors encoder.block.1.layer.0.SelfAttention.k.weight" in str(error.value)
    assert "decoder.final_layer_norm.weight: expected shape (32,), found (7,)" in str(error.value)
    assert not os.path.exists(tmp_path / "ckpt")


def test_unknown_tensors_are_named(hf_dir, tmp_path):
    def add(tensors):
        tensors["encoder.block.2.layer.0.layer_norm.weight"] = np.ones(32, np.float32)

    with pytest.raises(hf_convert.ConversionError, match=r"unexpected tensors .*encoder\.block\.2\.layer\.0"):
        hf_convert.import_hf(_edit_weights(hf_dir, tmp_path, add), str(tmp_path / "ckpt"))


def _write_hf_config(hf_dir, tmp_path, **changes):
    edited = str(tmp_path / "edited")
    shutil.copytree(hf_dir, edited)
    with open(os.path.join(edited, "config.json")) as f:
        config = json.load(f)
    config.update(changes)
    with open(os.path.join(edited, "config.json"), "w") as f:
        json.dump(config, f)
    return edited


def test_unsupported_configs_are_refused(hf_dir, tmp_path):
    edited = _write_hf_config(hf_dir, tmp_path, feed_forward_proj="gated-silu")
    with pytest.raises(hf_convert.ConversionError, match="feed_forward_proj 'gated-silu' is not supported"):
        hf_convert.import_hf(edited, str(tmp_path / "ckpt"))
    with pytest.raises(hf_convert.ConversionError, match="model_type 'bart'"):
        hf_convert.config_from_hf({"model_type": "bart"})


def test_vocabulary_larger_than_embedding_is_refused(vocab_path, tmp_path):
    too_small = testing.embedding_rows(vocab_path) - 128 + 1  # fewer rows than pieces + extra ids
    testing.save_random_hf_t5(str(tmp_path / "hf"), "t5_1_0", vocab_path, vocab_size=too_small)
    with pytest.raises(checkpoints.CheckpointError, match=f"embedding has only {too_small} rows"):
        hf_convert.import_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt"))


def test_embedding_size_disagreeing_with_config_is_named(hf_dir, tmp_path):
    def shrink(tensors):
        tensors["shared.weight"] = tensors["shared.weight"][:-8]

    with pytest.raises(hf_convert.ConversionError, match=r"shared\.weight: expected shape .*vocab_size="):
        hf_convert.import_hf(_edit_weights(hf_dir, tmp_path, shrink), str(tmp_path / "ckpt"))


def _run(argv):
    return cli.main(argv)  # as the command runs: a user error is one line on stderr and exit 2


@pytest.mark.parametrize("hf_dir", ["t5_1_1"], indirect=True)  # the commands do not depend on the flavour
def test_commands_convert_score_generate(hf_dir, tmp_path, capsys):
    ckpt, exported = str(tmp_path / "ckpt"), str(tmp_path / "exported")
    assert _run(["convert", "--from_hf", hf_dir, "--to", ckpt]) == 0
    assert _run(["convert", "--from_ckpt", ckpt, "--to_hf", exported]) == 0
    assert os.path.exists(os.path.join(exported, "model.safetensors"))
    assert _run(["convert", "--from_hf", hf_dir, "--to", ckpt]) == 2  # never overwrites
    assert "already holds a checkpoint" in capsys.readouterr().err

    records = [
        {"id": "a", "inputs": "which gas do plants take in?", "targets": "carbon dioxide"},
        {"id": "b", "inputs": "the moon orbits the earth", "targets": "recall: water boils"},
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _run(["score", "--checkpoint", ckpt, "--data", str(data), "--out", str(tmp_path / "s.jsonl")]) == 0
    scored = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [s["id"] for s in scored] == ["a", "b"]

    model, vocabulary = checkpoints.load_model(ckpt), checkpoints.load_vocabulary(ckpt)
    tokenize = lambda text: list(vocabulary.encode(text)) + [1]
    for record in scored:
        expected = scoring.score(model, [tokenize(record["inputs"])], [tokenize(record["targets"])])[0]
        assert abs(record["log_likelihood"] - expected) < 1e-4
        assert record["num_target_tokens"] == len(tokenize(record["targets"]))

    out = tmp_path / "g.jsonl"
    argv = ["generate", "--checkpoint", ckpt, "--data", str(data), "--out", str(out), "--max_decode_length", "6"]
    assert _run(argv) == 0
    greedy = [json.loads(line) for line in out.read_text().splitlines()]
    expected = decoding.generate(model, [tokenize(r["inputs"]) for r in records], max_decode_length=6)
    for record, tokens in zip(greedy, expected.tokens[:, 0]):
        assert record["predictions"] == [vocabulary.decode(decoding.until_eos(tokens.tolist()))]
    sample_args = ["--temperature", "1.0", "--top_k", "5", "--num_decodes", "3", "--seed", "4"]
    assert _run(argv + sample_args) == 0
    sampled = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(r["predictions"]) == 3 and len(r["log_likelihoods"]) == 3 for r in sampled)


def test_commands_report_bad_input(tmp_path, capsys):
    assert _run(["convert", "--from_hf", str(tmp_path), "--to", str(tmp_path / "ckpt")]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"inputs": "x"}\n')
    argv = ["score", "--checkpoint", str(tmp_path), "--data", str(tmp_path / "bad.jsonl"), "--out", "o.jsonl"]
    assert _run(argv) == 2
    assert "bad.jsonl:1: field 'targets'" in capsys.readouterr().err
