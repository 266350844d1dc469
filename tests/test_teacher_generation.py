"""End to end against a real local server: filtering and retry rounds, the CLI's outputs, the
dry-run estimate, the Batch API round trip, and a run killed mid-way then resumed."""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tinythinker_jax import cli
from tinythinker_jax.commands import teacher as teacher_command
from tinythinker_jax.data.records import make_question, question_to_json, read_teacher_records, write_jsonl
from tinythinker_jax.teacher import client, generation, prompts
from tinythinker_jax.teacher.cache import ResponseCache
from tinythinker_jax.teacher.fake_server import Reply, ScriptedServer, well_formed_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = "ABCD"


def _questions(count):
    return [make_question(f"q{i}", f"Question {i}?", [(l, f"{l.lower()}{i}") for l in LABELS], LABELS[i % 4])
            for i in range(count)]


def _split_dir(tmp_path, count):
    split_dir = tmp_path / "data"
    write_jsonl(str(split_dir / "train.jsonl"), map(question_to_json, _questions(count)))
    return str(split_dir)


def _cli(*argv):
    return cli.main(["teacher", *argv])  # as the command runs: a user error is one line on stderr and exit 2


def _question_of(body):
    return body["messages"][1]["content"].split("\n")[0].removeprefix("Q: ")


def _key(body):
    return prompts.Request("", body).key


def test_filtering_and_retry_rounds(tmp_path):
    questions = _questions(3)
    contradicting = "Key Information: K.\nExplanations:\n" + "\n".join(f"{l} is correct. Because x" for l in LABELS)

    def script(body, number):
        good = [well_formed_text(body, i) for i in range(body["n"])]
        question, round_index = _question_of(body), body["seed"] // 1000
        if question == "Question 2?":
            return Reply(texts=[contradicting] * body["n"])
        if question == "Question 0?":
            # Round 0: one good, its duplicate, one contradicting; round 1 fills the two missing.
            return Reply(texts=[good[0], good[0], contradicting]) if round_index == 0 else Reply()
        if round_index == 0:
            return Reply(texts=[good[0], "garbage", good[2].rsplit("\n", 1)[0]])  # good, no key info, missing option
        if round_index == 1:
            return Reply(finish_reason="length")
        return Reply(texts=[good[0], "Explanations: nothing"])

    sampling = prompts.TeacherSampling(model="local", samples=3, choices_per_request=3, rounds=3)
    with ScriptedServer(script) as server, ResponseCache(str(tmp_path / "c.jsonl")) as cache:
        settings = client.ClientSettings(base_url=server.base_url, backoff_base=0.01)
        outcome = generation.generate(
            questions, sampling, "SYS", cache,
            send=lambda requests: client.send_requests(requests, cache, settings, "local", progress=False),
            prices=(1.0, 2.0),
        )
    by_question = {}
    for body in server.requests:
        by_question.setdefault(_question_of(body), []).append((body["seed"], body["n"], body["temperature"]))
    assert sorted(by_question["Question 0?"]) == [(0, 3, 0.8), (1000, 2, 0.9)]
    assert sorted(by_question["Question 1?"]) == [(0, 3, 0.8), (1000, 2, 0.9), (2000, 2, 1.0)]
    assert sorted(by_question["Question 2?"]) == [(0, 3, 0.8), (1000, 3, 0.9), (2000, 3, 1.0)]

    assert [r.question.id for r in outcome.records] == ["q0", "q1"]
    assert [len(r.rationales) for r in outcome.records] == [3, 2]
    assert outcome.records[0].rationales[0].analyze["A"] == "reason 0-0 for option A."
    report = outcome.report
    assert report["filtered"] == {
        "truncated": 2, "no_key_information": 2, "malformed": 0, "missing_option": 1,
        "empty_explanation": 0, "contradicts_gold": 1 + 9, "duplicate": 1, "surplus": 0,
    }
    assert report["failed_questions"] == ["q2"]
    assert report["short_questions"] == [{"id": "q1", "samples": 2}]
    assert (report["rounds"], report["samples_kept"], report["records"]) == (3, 5, 2)
    assert report["requests"]["planned"] == report["requests"]["answered_now"] == 8
    assert report["tokens"]["prompt"] > 0
    assert report["cost_usd"] == pytest.approx((report["tokens"]["prompt"] + 2 * report["tokens"]["completion"]) / 1e6)


def test_cli_run_writes_teacher_records_and_report_and_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_TEACHER_KEY", "sk-never-on-disk")
    split_dir, out_dir = _split_dir(tmp_path, 3), str(tmp_path / "out")
    with ScriptedServer() as server:
        argv = ["run", "--dataset", "obqa", "--split_dir", split_dir, "--out_dir", out_dir, "--base_url",
                server.base_url, "--model", "local", "--api_key_env", "LOCAL_TEACHER_KEY", "--no-progress"]
        assert _cli(*argv) == 0
        assert len(server.requests) == 3 and {b["n"] for b in server.requests} == {4}  # obqa: 4 samples
        assert "Q: Which of these would conduct electricity best?" in server.requests[0]["messages"][0]["content"]
        assert _cli(*argv) == 0
        assert len(server.requests) == 3  # everything came from the cache
    records = read_teacher_records(os.path.join(out_dir, "train.jsonl"))
    assert [(r.question.id, len(r.rationales)) for r in records] == [("q0", 4), ("q1", 4), ("q2", 4)]
    assert records[1].rationales[0].recall == "The fact that settles the question, variant 0-0."
    assert records[1].rationales[0].analyze["B"] == "reason 0-0 for option B."
    report = json.load(open(os.path.join(out_dir, "train_report.json")))
    assert report["dataset"] == "obqa" and report["records"] == 3 and report["cost_usd"] is None
    assert report["requests"]["from_cache"] == 3 and report["failed_questions"] == []
    for root, _, files in os.walk(out_dir):
        for name in files:
            assert "sk-never-on-disk" not in open(os.path.join(root, name)).read()


def test_run_without_a_key_for_openai_stops_before_sending(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert _cli("run", "--dataset", "csqa", "--split_dir", _split_dir(tmp_path, 1), "--out_dir", str(tmp_path)) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_dry_run_estimate_sends_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-tiktoken-cache"))  # never a download
    split_dir = _split_dir(tmp_path, 5)
    with ScriptedServer() as server:
        argv = ["--dataset", "csqa", "--split_dir", split_dir, "--out_dir", str(tmp_path / "out"),
                "--choices_per_request", "3", "--k_exemplars", "2"]
        assert _cli("run", "--dry_run", "--base_url", server.base_url, *argv) == 0
        assert server.requests == []
    estimate = json.loads(capsys.readouterr().out)
    assert estimate["token_count_method"].startswith("approximate")
    assert (estimate["questions"], estimate["requests"], estimate["samples_to_request"]) == (5, 15, 40)  # n = 3, 3, 2
    system = prompts.system_message(teacher_command._Job(_cli_args(argv)).exemplars)
    user_tokens = [-(-len(prompts.user_message(q)) // 4) for q in _questions(5)]
    per_request = [-(-len(system) // 4) + u + 4 + 4 + 3 for u in user_tokens]
    assert estimate["input_tokens"] == 3 * sum(per_request)
    assert estimate["output_tokens_max"] == 40 * 256
    assert 20 < estimate["output_tokens_expected"] / 40 < 256
    assert estimate["price_per_million_usd"] == [5.0, 15.0]  # gpt-4o-2024-05-13, the paper's teacher
    assert estimate["cost_usd_expected"] == pytest.approx(
        (estimate["input_tokens"] * 5 + estimate["output_tokens_expected"] * 15) / 1e6)
    assert estimate["cost_usd_expected_batch_api"] == pytest.approx(estimate["cost_usd_expected"] / 2)

    assert _cli("estimate", "--model", "my-local-llama", *argv) == 0
    assert json.loads(capsys.readouterr().out)["cost_usd_expected"] is None


def _cli_args(argv):
    parser = argparse.ArgumentParser()
    teacher_command.add_parser(parser.add_subparsers())
    return parser.parse_args(["teacher", "estimate", *argv])


def _batch_output(batch_input, reply=lambda body, custom_id: Reply()):
    """What the Batch API would return for an input file, answered like the scripted server."""
    lines = []
    for entry in map(json.loads, open(batch_input)):
        body, scripted = entry["body"], reply(entry["body"], entry["custom_id"])
        if scripted.status != 200:
            lines.append({"id": "r", "custom_id": entry["custom_id"], "response": None,
                          "error": {"code": "server_error", "message": "scripted"}})
            continue
        texts = scripted.texts or [well_formed_text(body, i) for i in range(body["n"])]
        completion = {"id": "c", "object": "chat.completion", "model": body["model"], "usage": {
            "prompt_tokens": 10, "completion_tokens": 5},
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                        for i, t in enumerate(texts)]}
        lines.append({"id": "r", "custom_id": entry["custom_id"],
                      "response": {"status_code": 200, "request_id": "x", "body": completion}, "error": None})
    return lines


def test_batch_export_import_round_trip(tmp_path, capsys):
    split_dir, out_dir = _split_dir(tmp_path, 3), str(tmp_path / "out")
    common = ["--dataset", "strategyqa", "--split_dir", split_dir, "--out_dir", out_dir, "--samples", "2"]
    batch_in, batch_out = str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")

    assert _cli("export-batch", "--batch_file", batch_in, *common) == 0
    exported = [json.loads(line) for line in open(batch_in)]
    assert [(e["method"], e["url"]) for e in exported] == [("POST", "/v1/chat/completions")] * 3
    assert [e["custom_id"] for e in exported] == [_key(e["body"]) for e in exported]
    assert {e["body"]["n"] for e in exported} == {2} and {e["body"]["seed"] for e in exported} == {0}

    # q0's request fails in the batch; q1's samples contradict the gold label.
    def reply(body, custom_id):
        if _question_of(body) == "Question 0?":
            return Reply(status=500)
        if _question_of(body) == "Question 1?":
            return Reply(texts=[well_formed_text(body, 0).replace("A is incorrect", "A is correct")] * 2)
        return Reply()

    write_jsonl(batch_out, _batch_output(batch_in, reply))
    assert _cli("import-batch", "--batch_output", batch_out, *common) == 0
    assert "imported 2" in capsys.readouterr().out
    assert [r.question.id for r in read_teacher_records(os.path.join(out_dir, "train.jsonl"))] == ["q2"]
    report = json.load(open(os.path.join(out_dir, "train_report.json")))
    assert report["requests"]["pending"] == 1 and report["filtered"]["contradicts_gold"] == 2

    # The next export holds exactly the failed request: round 0 is still incomplete.
    assert _cli("export-batch", "--batch_file", batch_in, *common) == 0
    assert [json.loads(line)["custom_id"] for line in open(batch_in)] == [exported[0]["custom_id"]]
    write_jsonl(batch_out, _batch_output(batch_in))
    assert _cli("import-batch", "--batch_output", batch_out, *common) == 0

    # Now round 1 retries q1 with a new seed and a warmer temperature.
    assert _cli("export-batch", "--batch_file", batch_in, *common) == 0
    retry = [json.loads(line) for line in open(batch_in)]
    assert [(_question_of(e["body"]), e["body"]["seed"], e["body"]["temperature"]) for e in retry] == [
        ("Question 1?", 1000, 0.9)]
    write_jsonl(batch_out, _batch_output(batch_in))
    assert _cli("import-batch", "--batch_output", batch_out, *common) == 0
    records = read_teacher_records(os.path.join(out_dir, "train.jsonl"))
    assert [(r.question.id, len(r.rationales)) for r in records] == [("q0", 2), ("q1", 2), ("q2", 2)]
    assert records[1].rationales[0].analyze == {l: f"reason 1000-0 for option {l}." for l in LABELS}
    capsys.readouterr()
    assert _cli("export-batch", "--batch_file", batch_in, *common) == 0
    assert "nothing to export" in capsys.readouterr().out


def test_killed_run_resumes_sending_only_missing_requests_and_loses_no_response(tmp_path):
    answered_first, count, concurrency = 3, 8, 2
    release = threading.Event()
    answered = []

    def script(body, number):
        if number < answered_first:
            answered.append(_key(body))
            return Reply()
        release.wait(timeout=30)  # hold the rest in flight until the client is killed
        return Reply()

    split_dir, out_dir = _split_dir(tmp_path, count), str(tmp_path / "out")
    cache_path = os.path.join(out_dir, "cache", "responses.jsonl")
    runner = ("import argparse, sys; from tinythinker_jax.commands import teacher; p = argparse.ArgumentParser(); "
              "teacher.add_parser(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with ScriptedServer(script) as server:
        command = [sys.executable, "-c", runner, "teacher", "run", "--dataset", "obqa", "--split_dir", split_dir,
                   "--out_dir", out_dir, "--base_url", server.base_url, "--samples", "1",
                   "--concurrency", str(concurrency), "--no-progress"]
        first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not (os.path.exists(cache_path) and open(cache_path).read().count("\n") == answered_first):
            assert time.monotonic() < deadline and first.poll() is None, "the first run never cached its answers"
            time.sleep(0.02)
        while len(server.requests) < answered_first + concurrency:  # the next ones are in flight
            assert time.monotonic() < deadline
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        release.set()
        seen_first = [_key(b) for b in server.requests]
        cached_after_kill = {json.loads(line)["key"] for line in open(cache_path)}
        assert cached_after_kill == set(answered)  # every answer that arrived was kept

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        seen_second = [_key(b) for b in server.requests[len(seen_first):]]

    assert len(seen_first) == answered_first + concurrency
    assert len(seen_second) == count - answered_first and not set(seen_second) & cached_after_kill
    records = read_teacher_records(os.path.join(out_dir, "train.jsonl"))
    assert [r.question.id for r in records] == [f"q{i}" for i in range(count)]
    assert len(ResponseCache(cache_path)) == count
