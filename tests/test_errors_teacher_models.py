"""Every failure of `teacher run`, `convert`, `score`, `generate` and a training resume is one clear line
(or, for a damaged training checkpoint, a fallback that says what it skipped), and files written before stay
as they were. Each table runs the command as a user does, through `cli.main`: exit 2 and one `error:` line
naming the file, flag or server."""

import glob
import json
import os
import shutil

import pytest
from flax import nnx

from tinythinker_jax import cli
from tinythinker_jax.data.records import make_question, question_to_json, write_jsonl
from tinythinker_jax.errors import UserError
from tinythinker_jax.teacher.fake_server import Reply, ScriptedServer, well_formed_text

BEFORE = '{"written": "before"}\n'  # the content of an output file from an earlier run


def _error_line(capsys) -> str:
    """The one error line on stderr, which must also be its last line."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def _snapshot(directory) -> dict[str, bytes]:
    """Every file under `directory`, by relative path, with its bytes."""
    files = {}
    for path in glob.glob(os.path.join(directory, "**"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


# --- teacher run -----------------------------------------------------------------------------------------

QUESTIONS = 10


def _split_dir(tmp_path):
    questions = [make_question(f"q{i}", f"Question {i}?", [(l, f"{l.lower()}{i}") for l in "ABCD"], "ABCD"[i % 4])
                 for i in range(QUESTIONS)]
    split_dir = tmp_path / "data"
    write_jsonl(str(split_dir / "train.jsonl"), map(question_to_json, questions))
    return str(split_dir)


def _no_key_information(body, number):
    return Reply(texts=["Explanations: nothing"] * body["n"])


def _every_other_question_contradicts_gold(body, number):
    if int(body["messages"][1]["content"].split("?")[0].rsplit(" ", 1)[1]) % 2:
        return Reply(texts=[well_formed_text(body, 0).replace(" is incorrect.", " is correct.")] * body["n"])
    return Reply()


# (script, extra flags, what the error line says, at most how many requests reached the server)
TEACHER_RUN_CASES = {
    "wrong key (401)": (lambda b, n: Reply(status=401), [], ["answered 401", "API key was refused",
                                                             "$TEACHER_KEY"], 1),
    "no access (403)": (lambda b, n: Reply(status=403), [], ["answered 403", "--model"], 1),
    "unknown model (404)": (lambda b, n: Reply(status=404), [], ["answered 404", "--base_url"], 1),
    "non-JSON replies": (lambda b, n: Reply(raw=b"<html>not an API</html>"), ["--max_consecutive_failures", "3"],
                         ["failed 3 requests in a row", "JSONDecodeError x3", "not chat completions"], 3 * 2),
    "truncated JSON replies": (lambda b, n: Reply(raw=b'{"choices": [{"index": 0, "mess'),
                               ["--max_consecutive_failures", "3"], ["failed 3 requests in a row"], 3 * 2),
    "no usable sample": (_no_key_information, [], ["0/10 questions got teacher records",
                                                    "no_key_information x"], 10 * 3),
    "too few records": (_every_other_question_contradicts_gold, [],
                        ["5/10 questions got teacher records, fewer than --min_records_share 0.9",
                         "contradicts_gold x"], 10 * 3),
}


@pytest.mark.parametrize("case", list(TEACHER_RUN_CASES))
def test_teacher_run_failures(case, tmp_path, capsys, monkeypatch):
    script, flags, expected, most_requests = TEACHER_RUN_CASES[case]
    monkeypatch.setenv("TEACHER_KEY", "sk-test")
    split_dir, out_dir = _split_dir(tmp_path), tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "train.jsonl").write_text(BEFORE)
    with ScriptedServer(script) as server:
        code = cli.main(["teacher", "run", "--dataset", "obqa", "--split_dir", split_dir, "--out_dir", str(out_dir),
                         "--base_url", server.base_url, "--api_key_env", "TEACHER_KEY", "--samples", "1",
                         "--concurrency", "1", "--max_retries", "1", "--backoff_base", "0.001", "--no-progress",
                         *flags])
    assert code == 2
    line = _error_line(capsys)
    assert "teacher run:" in line and str(out_dir / "train_report.json") in line
    for text in expected:
        assert text in line
    if case != "no usable sample" and case != "too few records":
        assert server.base_url in line
    assert len(server.requests) <= most_requests  # stopped early, not 10 questions x rounds x retries
    assert (out_dir / "train.jsonl").read_text() == BEFORE  # the earlier records are not replaced
    report = json.loads((out_dir / "train_report.json").read_text())
    assert report["failure"] and report["failure"] in line


def test_a_short_run_is_accepted_with_a_lower_share_and_reuses_the_cache(tmp_path, capsys):
    split_dir, out_dir = _split_dir(tmp_path), tmp_path / "out"
    with ScriptedServer(_every_other_question_contradicts_gold) as server:
        argv = ["teacher", "run", "--dataset", "obqa", "--split_dir", split_dir, "--out_dir", str(out_dir),
                "--base_url", server.base_url, "--samples", "1", "--no-progress"]
        assert cli.main(argv) == 2
        sent = len(server.requests)
        assert cli.main([*argv, "--min_records_share", "0.5"]) == 0
        assert len(server.requests) == sent  # everything came from the cache
    assert len((out_dir / "train.jsonl").read_text().splitlines()) == QUESTIONS // 2
    assert json.loads((out_dir / "train_report.json").read_text())["failure"] is None


@pytest.mark.parametrize("flags, named", [
    (["--min_records_share", "1.5"], "--min_records_share"),
    (["--samples", "0"], "--samples"),
    (["--max_consecutive_failures", "0"], "--max_consecutive_failures"),
    (["--k_exemplars", "99"], "--k_exemplars 99"),
    (["--out_dir", "gs://bucket/teacher"], "--out_dir 'gs://bucket/teacher' is a URL"),
])
def test_teacher_run_flags(flags, named, tmp_path, capsys):
    with ScriptedServer() as server:
        code = cli.main(["teacher", "run", "--dataset", "obqa", "--split_dir", _split_dir(tmp_path),
                         "--base_url", server.base_url, "--no-progress", *flags])
    assert code == 2 and named in _error_line(capsys)
    assert server.requests == []


# --- convert, score, generate ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, vocab_path):
    from tinythinker_jax.models import testing

    directory = str(tmp_path_factory.mktemp("hf") / "hf")
    testing.save_random_hf_t5(directory, "t5_1_0", vocab_path)
    return directory


@pytest.fixture(scope="module")
def ckpt_dir(hf_dir, tmp_path_factory):
    from tinythinker_jax.models import hf_convert

    directory = str(tmp_path_factory.mktemp("ckpt") / "ckpt")
    hf_convert.import_hf(hf_dir, directory)
    return directory


def _edit_json(path, **changes):
    with open(path) as f:
        fields = json.load(f)
    with open(path, "w") as f:
        json.dump({**fields, **changes}, f)


def _cut_in_half(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _cut_largest_file(directory):
    _cut_in_half(max((p for p in glob.glob(os.path.join(directory, "**"), recursive=True) if os.path.isfile(p)),
                     key=os.path.getsize))


def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


# damage to a copy of the HF directory -> what the error line says (the file it names, relative to the copy)
HF_DAMAGE = {
    "no config.json": (lambda d: os.remove(f"{d}/config.json"), "config.json is missing"),
    "config.json cut off": (lambda d: _cut_in_half(f"{d}/config.json"), "{d}/config.json is not valid JSON"),
    "config.json with a text size": (lambda d: _edit_json(f"{d}/config.json", d_model="32"),
                                     "{d}/config.json: d_model='32'; expected positive integers"),
    "no spiece.model": (lambda d: os.remove(f"{d}/spiece.model"), "spiece.model is missing"),
    "spiece.model not a vocabulary": (lambda d: _write(f"{d}/spiece.model", b"<html>"),
                                      "{d}/spiece.model is not a SentencePiece model"),
    "safetensors cut off": (lambda d: _cut_in_half(f"{d}/model.safetensors"),
                            "{d}/model.safetensors cannot be read as safetensors"),
    "safetensors not safetensors": (lambda d: _write(f"{d}/model.safetensors", b"\x00" * 64),
                                    "{d}/model.safetensors cannot be read as safetensors"),
    "weights of another shape": (lambda d: _edit_json(f"{d}/config.json", d_kv=4),
                                 "{d}/model.safetensors does not fit {d}/config.json: mismatched tensors"),
    "no weights": (lambda d: os.remove(f"{d}/model.safetensors"), "{d} holds no weights"),
}


@pytest.mark.parametrize("case", list(HF_DAMAGE))
def test_convert_from_a_damaged_hugging_face_directory(case, hf_dir, tmp_path, capsys):
    damage, expected = HF_DAMAGE[case]
    copy = str(tmp_path / "hf")
    shutil.copytree(hf_dir, copy)
    damage(copy)
    assert cli.main(["convert", "--from_hf", copy, "--to", str(tmp_path / "ckpt")]) == 2
    assert expected.format(d=copy) in _error_line(capsys)
    assert not os.path.exists(tmp_path / "ckpt")


@pytest.mark.parametrize("argv, expected", [
    (["--from_hf", "{hf}", "--to", "gs://bucket/ckpt"], "--to 'gs://bucket/ckpt' is a URL"),
    (["--from_hf", "{hf}", "--to", "{ckpt}"], "{ckpt} already holds a checkpoint"),
    (["--from_hf", "{tmp}/nowhere", "--to", "{tmp}/new"], "{tmp}/nowhere is not a directory"),
    (["--from_ckpt", "{ckpt}", "--to_hf", "gs://bucket/hf"], "--to_hf 'gs://bucket/hf' is a URL"),
    (["--from_ckpt", "{ckpt}", "--to_hf", "{hf}"], "{hf} already holds config.json and model.safetensors"),
    (["--from_ckpt", "{ckpt}", "--to", "{tmp}/x"], "--from_ckpt needs --to_hf DIR"),
])
def test_convert_refuses_urls_and_written_directories(argv, expected, hf_dir, ckpt_dir, tmp_path, capsys):
    paths = {"hf": hf_dir, "ckpt": ckpt_dir, "tmp": str(tmp_path)}
    before = {d: _snapshot(d) for d in (hf_dir, ckpt_dir)}
    assert cli.main(["convert", *(a.format(**paths) for a in argv)]) == 2
    assert expected.format(**paths) in _error_line(capsys)
    assert {d: _snapshot(d) for d in (hf_dir, ckpt_dir)} == before
    assert os.listdir(tmp_path) == []


# damage to a copy of a model checkpoint -> what the error line says
CKPT_DAMAGE = {
    "no t5_config.json": (lambda d: os.remove(f"{d}/t5_config.json"), "{d} is not a model checkpoint: t5_config.json"),
    "t5_config.json cut off": (lambda d: _cut_in_half(f"{d}/t5_config.json"), "{d}/t5_config.json is not valid JSON"),
    "t5_config.json unknown field": (lambda d: _edit_json(f"{d}/t5_config.json", layers=3),
                                     "{d}/t5_config.json: unknown T5Config fields: ['layers']"),
    "t5_config.json with a text size": (lambda d: _edit_json(f"{d}/t5_config.json", d_ff="64"),
                                        "{d}/t5_config.json: d_ff is '64', expected an integer"),
    "no spiece.model": (lambda d: os.remove(f"{d}/spiece.model"),
                        "{d} is not a complete model checkpoint: spiece.model"),
    "spiece.model not a vocabulary": (lambda d: _write(f"{d}/spiece.model", b"not a model"),
                                      "{d}/spiece.model is not a SentencePiece model"),
    "embedding smaller than the vocabulary": (lambda d: _edit_json(f"{d}/t5_config.json", vocab_size=150),
                                              "but the model's embedding has only 150 rows"),
    "no params/": (lambda d: shutil.rmtree(f"{d}/params"), "{d} is not a model checkpoint: params/ is missing"),
    "params/ array file cut off": (lambda d: _cut_largest_file(f"{d}/params"), "{d}/params cannot be read ("),
    "params/ of another shape": (lambda d: _edit_json(f"{d}/t5_config.json", d_ff=48),
                                 "{d} does not match its t5_config.json"),
}
COMMANDS = {
    "convert": lambda d, tmp: ["convert", "--from_ckpt", d, "--to_hf", f"{tmp}/out"],
    "score": lambda d, tmp: ["score", "--checkpoint", d, "--data", f"{tmp}/data.jsonl", "--out", f"{tmp}/out"],
    "generate": lambda d, tmp: ["generate", "--checkpoint", d, "--data", f"{tmp}/data.jsonl", "--out", f"{tmp}/out"],
}


def _data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"inputs": "the moon orbits the earth", "targets": "water boils"}) + "\n")
    return path


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(CKPT_DAMAGE))
def test_a_damaged_model_checkpoint_is_named(case, command, ckpt_dir, tmp_path, capsys):
    damage, expected = CKPT_DAMAGE[case]
    copy = str(tmp_path / "ckpt")
    shutil.copytree(ckpt_dir, copy)
    damage(copy)
    _data_file(tmp_path)
    if command != "convert":
        (tmp_path / "out").write_text(BEFORE)
    assert cli.main(COMMANDS[command](copy, str(tmp_path))) == 2
    assert expected.format(d=copy) in _error_line(capsys)
    if command == "convert":
        assert not os.path.exists(tmp_path / "out")
    else:
        assert (tmp_path / "out").read_text() == BEFORE


@pytest.mark.parametrize("command, flags, expected", [
    ("score", ["--data", "{tmp}/missing.jsonl"], "{tmp}/missing.jsonl"),
    ("score", ["--data", "{tmp}/no_targets.jsonl"], "{tmp}/no_targets.jsonl:1: field 'targets'"),
    ("score", ["--out", "gs://bucket/scores.jsonl"], "--out 'gs://bucket/scores.jsonl' is a URL"),
    ("generate", ["--out", "{tmp}/data.jsonl"], "--out {tmp}/data.jsonl is the --data file"),
    ("score", ["--batch_size", "0"], "--batch_size"),
    ("generate", ["--top_p", "0"], "--top_p"),
    ("generate", ["--num_decodes", "-1"], "--num_decodes"),
])
def test_score_and_generate_inputs(command, flags, expected, ckpt_dir, tmp_path, capsys):
    _data_file(tmp_path)
    (tmp_path / "no_targets.jsonl").write_text('{"inputs": "x"}\n')
    (tmp_path / "out.jsonl").write_text(BEFORE)
    before = _snapshot(tmp_path)
    argv = [command, "--checkpoint", ckpt_dir, "--data", f"{tmp_path}/data.jsonl", "--out", f"{tmp_path}/out.jsonl"]
    assert cli.main(argv + [flag.format(tmp=tmp_path) for flag in flags]) == 2  # later flags win
    assert expected.format(tmp=tmp_path) in _error_line(capsys)
    assert _snapshot(tmp_path) == before


def test_a_vocabulary_given_for_a_checkpoint_must_be_its_own(ckpt_dir, tmp_path):
    from tinythinker_jax.models import checkpoints

    same = tmp_path / "same.model"
    shutil.copyfile(os.path.join(ckpt_dir, "spiece.model"), same)
    checkpoints.check_checkpoint_vocabulary(ckpt_dir, str(same), "--vocab")  # same content, another path: fine
    # Other bytes (the trainer's settings a file records) but the same pieces and scores tokenise alike: fine.
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(same.read_bytes())
    proto.trainer_spec.input[:] = ["another/corpus.txt"]
    relabelled = tmp_path / "relabelled.model"
    relabelled.write_bytes(proto.SerializeToString())
    assert relabelled.read_bytes() != same.read_bytes()
    checkpoints.check_checkpoint_vocabulary(ckpt_dir, str(relabelled), "--vocab")
    other = _other_vocabulary(tmp_path)
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.check_checkpoint_vocabulary(ckpt_dir, other, "--vocab")
    assert f"--vocab {other} is not the vocabulary of {ckpt_dir}" in str(error.value)
    assert isinstance(error.value, UserError)


def test_training_from_a_checkpoint_refuses_data_in_another_vocabulary(ckpt_dir, small_toyworld, tmp_path):
    """INITIAL_CHECKPOINT_PATH's model reads the data's token ids: the data's vocabulary must be its own;
    a checkpoint saved with the data's vocabulary starts training."""
    from tinythinker_jax.models import checkpoints, t5
    from tinythinker_jax.phases import setup

    with pytest.raises(checkpoints.CheckpointError, match=rf"the vocabulary \(VOCABULARY_PATH\) .* is not the "
                                                          rf"vocabulary of {ckpt_dir}"):
        _train(tmp_path / "refused", small_toyworld, initial_checkpoint_path=ckpt_dir)
    assert not os.path.exists(tmp_path / "refused" / "checkpoints")

    config = t5.model_config("t5_1_0_tiny", vocab_size=768)
    _, _, vocabulary = setup.setup_data("tinythinker.toyworld.full_stages", small_toyworld, None, config)
    own = str(tmp_path / "own")
    checkpoints.save_checkpoint(own, nnx.state(t5.create_model(config, seed=1), nnx.Param), config,
                                vocabulary.sentencepiece_model_file)
    assert _train(tmp_path / "started", small_toyworld, initial_checkpoint_path=own, train_steps=1).step == 1


def _other_vocabulary(tmp_path) -> str:
    """A SentencePiece model trained on other text, with T5's special ids like the checkpoint's."""
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["a quite different corpus of words", "for another vocabulary entirely"] * 8))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "other"), vocab_size=40, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return str(tmp_path / "other.model")


# --- resuming training from damaged checkpoints ----------------------------------------------------------

STEPS = 2  # a checkpoint after each step (eval_every=1)


def _train(model_dir, data_dir, **overrides):
    from tinythinker_jax.models import t5
    from tinythinker_jax.training import trainer

    settings = dict(
        model_dir=str(model_dir), mixture_or_task_name="tinythinker.toyworld.full_stages",
        task_feature_lengths={"inputs": 192, "targets": 32},
        model_config=t5.model_config("t5_1_0_tiny", vocab_size=768),
        batch_size=8, train_steps=STEPS, interval=1, data_dir=data_dir, max_eval_questions=2, eval_every=1,
        log_every=1, keep_checkpoints=3,
    )
    return trainer.train(**{**settings, **overrides})


def _params(model_dir, step):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(model_dir, "checkpoints", str(step), "arrays"))["params"]


@pytest.fixture(scope="module")
def trained(small_toyworld, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("trained"))
    assert _train(model_dir, small_toyworld).step == STEPS
    assert sorted(map(int, os.listdir(os.path.join(model_dir, "checkpoints")))) == [1, 2]
    return model_dir


def _copy_run(trained, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(trained, copy)
    return copy


# damage to the latest step -> what the warning says of it
LATEST_STEP_DAMAGE = {
    "array file cut off": (lambda step: _cut_largest_file(f"{step}/arrays"), "(OUT_OF_RANGE: Error reading"),
    "info cut off": (lambda step: _cut_in_half(f"{step}/info/metadata"), "(Unterminated string"),
}


@pytest.mark.parametrize("case", list(LATEST_STEP_DAMAGE))
def test_resume_falls_back_to_the_newest_intact_checkpoint(case, trained, small_toyworld, tmp_path, capsys):
    import jax
    import numpy as np

    damage, reason = LATEST_STEP_DAMAGE[case]
    run = _copy_run(trained, tmp_path)
    damage(os.path.join(run, "checkpoints", str(STEPS)))
    capsys.readouterr()
    result = _train(run, small_toyworld)
    assert (result.step, result.preempted) == (STEPS, False)
    out, err = capsys.readouterr()
    assert f"Resuming sft from {run} at step {STEPS - 1}." in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped checkpoint")]
    assert len(warnings) == 1
    assert f"step {STEPS} of {run}/checkpoints: it cannot be restored {reason}" in warnings[0]
    assert f"resuming from step {STEPS - 1}" in warnings[0]
    assert [name.split("-")[0] for name in os.listdir(os.path.join(run, "checkpoints_unreadable"))] == [str(STEPS)]
    # The step trained again is the one the damaged checkpoint held: resumption is exact.
    jax.tree.map(np.testing.assert_array_equal, _params(trained, STEPS), _params(run, STEPS))


def test_resume_with_every_checkpoint_damaged_stops_and_moves_nothing(trained, small_toyworld, tmp_path):
    run = _copy_run(trained, tmp_path)
    for step in range(1, STEPS + 1):
        _cut_in_half(os.path.join(run, "checkpoints", str(step), "info", "metadata"))
    before = _snapshot(os.path.join(run, "checkpoints"))
    with pytest.raises(UserError, match=rf"no checkpoint in {run}/checkpoints can be restored \(step 2: .*; step 1: "):
        _train(run, small_toyworld)
    assert _snapshot(os.path.join(run, "checkpoints")) == before


def test_resume_with_another_vocabulary_is_refused(trained, small_toyworld, tmp_path):
    run = _copy_run(trained, tmp_path)
    other = _other_vocabulary(tmp_path)
    with pytest.raises(UserError, match=f"the vocabulary \\(VOCABULARY_PATH\\) {other} is not the vocabulary of "):
        _train(run, small_toyworld, vocabulary_path=other)
