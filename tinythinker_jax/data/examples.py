"""Stage examples (`{"id", "inputs", "targets"}`) built from teacher records with the format module."""

from typing import Iterable, Iterator

from tinythinker_jax import formats
from tinythinker_jax.data.records import TeacherRecord


def _examples_of_rationale(record: TeacherRecord, rationale, stage: str, stage_type: str) -> Iterator[tuple[str, str]]:
    question = record.question
    stages = formats.stages_of(stage_type)
    recall = rationale.recall if formats.RECALL in stages else None
    analyses = rationale.analyze if formats.ANALYZE in stages else None
    if stage == formats.RECALL:
        yield formats.recall_input(question), rationale.recall.strip()
    elif stage == formats.ANALYZE:
        for label in question.labels:
            yield formats.analyze_input(question, recall, label), rationale.analyze[label].strip()
    else:
        yield formats.summarize_input(question, recall, analyses), formats.summary_target(question.answer)


def stage_examples(records: Iterable[TeacherRecord], stage: str, stage_type: str = "full") -> list[dict[str, str]]:
    """Every rationale's examples for one stage, in record order, exact (inputs, targets) duplicates removed."""
    if stage not in formats.stages_of(stage_type):
        raise ValueError(f"stage {stage!r} is not part of stage type {stage_type!r}")
    seen, examples = set(), []
    for record in records:
        for rationale in record.rationales:
            for inputs, targets in _examples_of_rationale(record, rationale, stage, stage_type):
                if (inputs, targets) not in seen:
                    seen.add((inputs, targets))
                    examples.append({"id": record.question.id, "inputs": inputs, "targets": targets})
    return examples
