import collections
import json
import os
import re
import subprocess
import sys

import pytest

from tinythinker_jax import formats
from tinythinker_jax.data.records import make_question
from tinythinker_jax.data.toyworld import ATTRIBUTES, ToyWorld

MC_VARIANTS = {"mc5": "ABCDE", "mc4": "ABCD"}


@pytest.fixture(scope="module")
def world():
    return ToyWorld.generate(seed=0)


def question_index(world):
    """Question text -> (entity, attribute, claimed value or None), for every text the world can ask."""
    index = {}
    for entity in world.entities:
        names = {"entity": entity, "entities": entity + "s"}
        for attribute in ATTRIBUTES:
            for template in attribute.questions:
                index[template.format(**names)] = (entity, attribute, None)
            for template in attribute.claims:
                for value in attribute.values:
                    index[template.format(value=value, **names)] = (entity, attribute, value)
    return index


@pytest.fixture(scope="module")
def about(world):
    """Recovers what a question asks from its text alone, independently of the generator's bookkeeping."""
    index = question_index(world)
    return lambda question: index[question.question]


def words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def all_questions(world):
    return [q for splits in world.questions.values() for questions in splits.values() for q in questions]


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    contents = {}
    for name, seed in (("first", 3), ("again", 3), ("other", 4)):
        world = ToyWorld.generate(seed=seed)
        for variant in ("mc5", "mc4", "yesno"):
            for path in world.write_raw(str(tmp_path / name / variant), variant):
                with open(path, "rb") as f:
                    contents[name, variant, os.path.basename(path)] = f.read()
    first = {key[1:]: data for key, data in contents.items() if key[0] == "first"}
    assert len(first) == 7
    for key, data in first.items():
        assert contents[("again", *key)] == data, key
        assert contents[("other", *key)] != data, key
    assert ToyWorld.generate(seed=3).corpus() == ToyWorld.generate(seed=3).corpus()


def test_sizes_option_counts_and_balanced_gold_labels(world):
    for variant, labels in MC_VARIANTS.items():
        splits = world.questions[variant]
        assert {split: len(qs) for split, qs in splits.items()} == {"train": 2016, "dev": 224, "test": 224}
        for questions in splits.values():
            assert all(q.labels == tuple(labels) for q in questions)
            gold_counts = collections.Counter(q.answer for q in questions)
            assert max(gold_counts.values()) - min(gold_counts.values()) <= 1, gold_counts
    yes_no = world.questions["yesno"]["train"]
    assert len(yes_no) == 1792
    assert all([o.text for o in q.options] == ["yes", "no"] for q in yes_no)
    assert collections.Counter(q.answer for q in yes_no) == {"A": 896, "B": 896}
    ids = [q.id for q in all_questions(world)]
    assert len(set(ids)) == len(ids)


def test_exactly_one_option_is_the_categorys_value(world, about):
    for variant in MC_VARIANTS:
        for questions in world.questions[variant].values():
            for question in questions:
                entity, attribute, _ = about(question)
                value = world.facts[world.entities[entity]][attribute.name]
                texts = [o.text for o in question.options]
                assert len(set(texts)) == len(texts)
                assert [o.label for o in question.options if o.text == value] == [question.answer]
                # Every distractor is some category's value, so none can be ruled out by form.
                category_values = {facts[attribute.name] for facts in world.facts.values()}
                assert set(texts) <= category_values
    for question in world.questions["yesno"]["train"]:
        entity, attribute, claim = about(question)
        is_true = world.facts[world.entities[entity]][attribute.name] == claim
        assert question.answer == ("A" if is_true else "B")


def test_held_out_questions_need_facts_taught_only_in_training_rationales(world, about):
    for variant in MC_VARIANTS:
        train = world.questions[variant]["train"]
        train_pairs = {about(q)[:2] for q in train}
        recalls = [(about(q)[0], world.teacher_record(q, num_samples=1).rationales[0].recall) for q in train]
        for split in ("dev", "test"):
            for question in world.questions[variant][split]:
                entity, attribute, _ = about(question)
                assert (entity, attribute) not in train_pairs
                membership, fact = re.findall(r"[^.]+\.", world.teacher_record(question, 1).rationales[0].recall)
                assert any(e == entity and recall.startswith(membership) for e, recall in recalls)
                assert any(e != entity and recall.endswith(fact) for e, recall in recalls)


def test_yes_no_facts_recur_enough_to_survive_any_split(world, about):
    entity_counts, fact_counts = collections.Counter(), collections.Counter()
    for question in world.questions["yesno"]["train"]:
        entity, attribute, _ = about(question)
        entity_counts[entity] += 1
        fact_counts[world.entities[entity], attribute.name] += 1
    # Missing every one of 20 draws that land in an 80% training split has probability 0.2**20.
    assert len(entity_counts) == len(world.entities) and min(entity_counts.values()) >= 20
    assert len(fact_counts) == len(world.categories) * len(ATTRIBUTES) and min(fact_counts.values()) >= 20


def test_questions_never_state_the_category_or_its_fact(world, about):
    categories = set(world.categories) | {c + "s" for c in world.categories}
    for question in all_questions(world):
        text = question.question + " " + " ".join(o.text for o in question.options)
        assert not words(text) & categories, question
        entity, attribute, claim = about(question)
        value = world.facts[world.entities[entity]][attribute.name]
        if claim is None:
            assert value not in question.question
        assert "kind of" not in question.question


def test_teacher_record_explains_every_option_without_a_verdict(world, about):
    for variant in ("mc5", "mc4", "yesno"):
        for question in world.questions[variant]["train"][:200] + world.questions[variant].get("test", ())[:50]:
            record = world.teacher_record(question, num_samples=3)
            assert record.question == question
            assert len(record.rationales) == 3
            assert record.rationales[0] != record.rationales[1]
            assert record.rationales[0] == record.rationales[2]
            entity, attribute, _ = about(question)
            category = world.entities[entity]
            value = world.facts[category][attribute.name]
            for rationale in record.rationales:
                assert category in rationale.recall and value in rationale.recall
                assert len(rationale.recall.split()) <= 25
                assert list(rationale.analyze) == list(question.labels)
                for label, text in rationale.analyze.items():
                    assert formats.strip_verdict(text) == text
                    assert formats.close_sentence(text) == text
                    assert len(text.split()) <= 15, text
                    if variant != "yesno" and label != question.answer:
                        assert {o.label: o.text for o in question.options}[label] in text
    assert world.teacher_record(question) == world.teacher_record(question)


def test_a_noisy_teacher_states_a_wrong_category_with_the_gold_value_in_the_share_asked(world, about):
    """With `noise`, a share of rationales close to it puts the entity in another category and gives that
    category the gold value, still explaining the gold answer; which ones is fixed by the world's seed."""
    noisy = clean = 0
    for variant in ("mc5", "yesno"):
        for question in world.questions[variant]["train"][:300]:
            entity, attribute, _ = about(question)
            category = world.entities[entity]
            value = world.facts[category][attribute.name]
            record = world.teacher_record(question, num_samples=2, noise=0.3)
            assert record == world.teacher_record(question, num_samples=2, noise=0.3)
            truthful_record = world.teacher_record(question, num_samples=2)
            for rationale, truthful in zip(record.rationales, truthful_record.rationales):
                assert value in rationale.recall
                if category in rationale.recall:
                    clean += 1
                    assert rationale == truthful
                    continue
                noisy += 1
                stated = [other for other in world.categories if other in rationale.recall.lower()]
                assert len(stated) == 1 and stated[0] != category

                def restated(text, category=category, wrong=stated[0]):
                    return text.replace(category, wrong).replace(category.capitalize(), wrong.capitalize())

                assert rationale.recall == restated(truthful.recall)
                assert rationale.analyze == {label: restated(text) for label, text in truthful.analyze.items()}
    assert 0.25 < noisy / (noisy + clean) < 0.35
    with pytest.raises(ValueError, match="noise"):
        world.teacher_record(question, noise=1.0)


def test_teacher_record_refuses_unknown_or_altered_questions(world):
    question = world.questions["mc5"]["train"][0]
    stranger = make_question("obqa-7", question.question, [(o.label, o.text) for o in question.options], "A")
    with pytest.raises(KeyError, match="obqa-7"):
        world.teacher_record(stranger)
    other_answer = next(label for label in question.labels if label != question.answer)
    altered = make_question(question.id, question.question, [(o.label, o.text) for o in question.options],
                            other_answer)
    with pytest.raises(ValueError, match=question.id):
        world.teacher_record(altered)


def test_raw_multiple_choice_files_have_the_openbookqa_shape(world, tmp_path):
    for variant, labels in MC_VARIANTS.items():
        paths = world.write_raw(str(tmp_path / variant), variant)
        assert [os.path.basename(p) for p in paths] == ["train.jsonl", "dev.jsonl", "test.jsonl"]
        for path, split in zip(paths, ("train", "dev", "test")):
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f]
            assert len(rows) == len(world.questions[variant][split])
            for row in rows:
                assert set(row) == {"id", "answerKey", "question"}
                assert set(row["question"]) == {"stem", "choices"}
                choices = row["question"]["choices"]
                assert [c["label"] for c in choices] == list(labels)
                assert all(set(c) == {"label", "text"} and c["text"] for c in choices)
                assert row["answerKey"] in labels
            # What a reader builds from the file is what the teacher knows.
            first = rows[0]
            question = make_question(first["id"], first["question"]["stem"],
                                     [(c["label"], c["text"]) for c in first["question"]["choices"]],
                                     first["answerKey"])
            assert world.teacher_record(question).question == question


def test_raw_yes_no_file_has_the_strategyqa_shape(world, tmp_path):
    (path,) = world.write_raw(str(tmp_path), "yesno")
    assert os.path.basename(path) == "strategyqa_train.json"
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    assert isinstance(rows, list) and len(rows) == 1792
    for row in rows:
        assert set(row) == {"qid", "question", "answer", "facts"}
        assert isinstance(row["answer"], bool)
        assert len(row["facts"]) == 2 and all(isinstance(fact, str) and fact for fact in row["facts"])
    assert sum(row["answer"] for row in rows) == len(rows) // 2
    first = rows[0]
    question = make_question(first["qid"], first["question"], [("A", "yes"), ("B", "no")],
                             "A" if first["answer"] else "B", first["facts"])
    assert world.teacher_record(question).rationales


def test_write_raw_rejects_an_unknown_variant(world, tmp_path):
    with pytest.raises(ValueError, match="mc3"):
        world.write_raw(str(tmp_path), "mc3")


def test_corpus_holds_every_name_and_format_string(world):
    corpus = world.corpus()
    text = "\n".join(corpus)
    assert all("\n" not in line for line in corpus)
    assert words(text) >= set(world.entities) | set(world.categories)
    for fixed in ("Recall:", "Analyze: For option A,", "For option E,", "Summarize:"):
        assert fixed in text
    for label in "ABCDE":
        assert formats.summary_target(label) in corpus


@pytest.mark.parametrize("kwargs", [{"num_categories": 4}, {"num_categories": 9}, {"entities_per_category": 1}])
def test_generate_rejects_worlds_that_break_the_guarantees(kwargs):
    with pytest.raises(ValueError):
        ToyWorld.generate(seed=0, **kwargs)


def test_smaller_worlds_keep_the_coverage_guarantee():
    world = ToyWorld.generate(seed=5, num_categories=5, entities_per_category=2)
    index = question_index(world)
    train_pairs = {index[q.question][:2] for q in world.questions["mc5"]["train"]}
    for question in world.questions["mc5"]["dev"] + world.questions["mc5"]["test"]:
        entity, attribute, _ = index[question.question]
        assert (entity, attribute) not in train_pairs
        assert any(e == entity for e, _ in train_pairs)
        assert any(world.entities[e] == world.entities[entity] and a == attribute for e, a in train_pairs)


def test_files_do_not_depend_on_the_process_hash_seed(tmp_path):
    script = ("import sys; from tinythinker_jax.data.toyworld import ToyWorld; "
              "[ToyWorld.generate(seed=0).write_raw(sys.argv[1], v) for v in ('mc5', 'yesno')]")
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env)
        outputs.append({name: (out / name).read_bytes() for name in sorted(os.listdir(out))})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 4
