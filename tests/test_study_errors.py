"""The study's stage-by-stage chain checks, on chains made of the toy teacher's own rationales: a truthful
teacher's pass every check, a noisy one's name a wrong category with the true value, and a flipped verdict or a
wrong answer is caught."""

import json

import pytest

from tinythinker_jax import formats, study_errors
from tinythinker_jax.data.toyworld import ToyWorld
from tinythinker_jax.reflection import sampling


@pytest.fixture(scope="module")
def world():
    return ToyWorld.generate(seed=0)


def teacher_chain(world, question, noise=0.0, prediction=None):
    rationale = world.teacher_record(question, num_samples=1, noise=noise).rationales[0]
    return {"recall": rationale.recall, "analyses": dict(rationale.analyze), "summary": "",
            "prediction": prediction or question.answer}


def test_truth_names_the_facts_behind_each_question(world):
    for variant in ("mc5", "yesno"):
        for question in world.questions[variant]["train"][:100]:
            truth = world.truth(question.id)
            assert world.entities[truth.entity] == truth.category
            recall = world.teacher_record(question, num_samples=1).rationales[0].recall
            assert truth.entity in recall.lower() and truth.category in recall.lower() and truth.value in recall
            if variant == "yesno":
                assert truth.fitting_labels == (frozenset("AB") if question.answer == "A" else frozenset())
            else:
                assert truth.fitting_labels == {question.answer}
                assert {o.label: o.text for o in question.options}[question.answer] == truth.value
    with pytest.raises(KeyError, match="obqa-1"):
        world.truth("obqa-1")


def test_a_truthful_teachers_chains_pass_and_a_noisy_ones_name_a_wrong_category(world):
    noisy = 0
    for variant in ("mc4", "yesno"):
        for question in world.questions[variant]["train"][:150]:
            truth = world.truth(question.id)
            check = study_errors.check_chain(teacher_chain(world, question), question.answer, truth, world.categories)
            assert check == study_errors.ChainCheck(True, True, True, False, False, True)
            check = study_errors.check_chain(teacher_chain(world, question, noise=0.5), question.answer, truth,
                                             world.categories)
            assert check.true_value and check.verdicts and check.correct
            noisy += not check.own_category
    assert noisy > 50


def test_a_flipped_verdict_a_wrong_value_and_a_wrong_answer_are_caught(world):
    question = next(q for q in world.questions["yesno"]["train"] if q.answer == "A")
    truth = world.truth(question.id)
    wrong = next(q for q in world.questions["yesno"]["train"] if q.answer == "B" and world.truth(q.id) != truth)
    chain = teacher_chain(world, question)
    flipped = {**chain, "analyses": teacher_chain(world, wrong)["analyses"]}  # "..., not <claim>."
    check = study_errors.check_chain(flipped, "A", truth, world.categories)
    assert not check.verdicts and check.rejects_right and not check.accepts_wrong
    other_value = {**chain, "recall": chain["recall"].replace(truth.value, "zzz")}
    assert not study_errors.check_chain(other_value, "A", truth, world.categories).true_value
    assert not study_errors.check_chain({**chain, "prediction": "B"}, "A", truth, world.categories).correct
    summary_only = {**chain, "recall": None, "analyses": None}
    assert study_errors.check_chain(summary_only, "A", truth, world.categories) == study_errors.ChainCheck(
        None, None, None, None, None, True)


def test_check_predictions_gives_shares_and_the_accuracy_by_verdict(world, tmp_path):
    questions = world.questions["yesno"]["train"][:4]
    rows = []
    for index, question in enumerate(questions):
        chain = teacher_chain(world, question)
        if index == 0:  # a wrong verdict that still answers right
            chain["analyses"] = {label: "not " + text for label, text in chain["analyses"].items()} \
                if question.answer == "A" else dict.fromkeys(chain["analyses"], "it fits.")
        if index == 1:  # right verdicts, wrong answer
            chain["prediction"] = "B" if question.answer == "A" else "A"
        rows.append({"id": question.id, "answer": question.answer, "chains": [chain]})
    path = tmp_path / "predictions_test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = study_errors.check_predictions(str(path), world)
    assert result == {"questions": 4, "own_category": 1.0, "true_value": 1.0, "verdicts": 0.75,
                      "accepts_wrong": 0.25 * (questions[0].answer == "B"),
                      "rejects_right": 0.25 * (questions[0].answer == "A"), "correct": 0.75,
                      "correct_when_verdicts_right": pytest.approx(2 / 3), "correct_when_verdicts_wrong": 1.0}


def test_check_pairs_tells_right_texts_from_wrong_ones_and_counts_identical_pairs(world, tmp_path):
    questions = world.questions["yesno"]["train"][:4]
    recall_rows, analyze_rows = [], []
    for question in questions:
        truth = world.truth(question.id)
        right = teacher_chain(world, question)
        wrong_recall = right["recall"].replace(truth.value, "zzz")
        recall_rows.append({"id": question.id, "prompt": formats.recall_input(question), "chosen": right["recall"],
                            "rejected": wrong_recall})
        for label in question.labels:
            flipped = "it fits." if label not in truth.fitting_labels else "not " + right["analyses"][label]
            analyze_rows.append({"id": question.id, "prompt": formats.analyze_input(question, right["recall"], label),
                                 "chosen": right["analyses"][label], "rejected": flipped})
    analyze_rows[0]["rejected"] = analyze_rows[0]["chosen"]
    for stage, rows in (("recall", recall_rows), ("analyze", analyze_rows)):
        with open(sampling.pairs_path(str(tmp_path), stage), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    checks = study_errors.check_pairs(str(tmp_path), world)
    assert checks["recall"] == {"pairs": 4, "chosen_right": 1.0, "rejected_right": 0.0, "same_texts": 0.0}
    assert checks["analyze"] == {"pairs": 8, "chosen_right": 1.0, "rejected_right": 1 / 8, "same_texts": 1 / 8,
                                 "chosen_fits": sum(bool(world.truth(q.id).fitting_labels) for q in questions) / 4}
    empty = tmp_path / "none"
    empty.mkdir()
    assert study_errors.check_pairs(str(empty), world)["analyze"] == {
        "pairs": 0, "chosen_right": None, "rejected_right": None, "same_texts": None, "chosen_fits": None}
