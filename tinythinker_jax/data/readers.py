"""Readers for the upstream benchmark files, each returning the shared Question record.

CommonsenseQA and OpenBookQA are JSONL with `{id, answerKey, question: {stem, choices: [{label, text}]}}`;
StrategyQA is a JSON list of `{qid, question, answer: bool, facts}`, cast as `(A) yes (B) no`.
"""

from tinythinker_jax.data.records import (
    DataError,
    JsonFields,
    Question,
    check_unique_ids,
    iter_json_lines,
    load_json,
    make_question,
)

YES_NO_OPTIONS = (("A", "yes"), ("B", "no"))


def _multiple_choice(fields: JsonFields, num_options: int) -> Question:
    stem = fields.child("question")
    choices = stem.get("choices", list)
    options = []
    for index in range(len(choices)):
        choice = stem.child("choices", index)
        options.append((choice.get("label", str), choice.get("text", str)))
    if len(options) != num_options:
        raise stem.error("choices", f"expected {num_options} options, got {len(options)}")
    options.sort()  # label order, whatever order the file lists them in
    return make_question(
        fields.get("id", str), stem.get("stem", str), options, fields.get("answerKey", str),
        path=fields.path, line=fields.line, options_field="question.choices", answer_field="answerKey",
    )


def read_multiple_choice_jsonl(path: str, num_options: int) -> list[Question]:
    """CommonsenseQA (5 options) and OpenBookQA (4 options) files share this schema."""
    located = []
    for line, obj in iter_json_lines(path, allow_empty=False):
        fields = JsonFields(obj, path, line)
        fields.get("question", dict)
        located.append((fields, _multiple_choice(fields, num_options)))
    check_unique_ids(located)
    return [q for _, q in located]


def read_strategyqa_json(path: str) -> list[Question]:
    """A JSON list; errors name the item index, since the file is one document."""
    items = load_json(path)
    if not isinstance(items, list) or not items:
        raise DataError(path, None, None, "expected a non-empty JSON list of questions")
    located = []
    for index, obj in enumerate(items):
        fields = JsonFields(obj, path, None, prefix=f"[{index}]")
        facts = fields.get("facts", list, optional=True, default=[])
        gold = "A" if fields.get("answer", bool) else "B"
        question = make_question(
            fields.get("qid", str), fields.get("question", str), YES_NO_OPTIONS, gold,
            [str(fact) for fact in facts], path=path, line=None,
        )
        located.append((fields, question))
    check_unique_ids(located, id_field="qid")
    return [q for _, q in located]
