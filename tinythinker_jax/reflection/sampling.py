"""Steps 1 and 5 of self-reflection: the student samples its own chains, and `pairs` turns them into
preference rows.

Questions are processed in fixed chunks whose rows are written atomically as they finish, so an
interrupted generation resumes at the first unfinished chunk. Every random choice depends only on the
seed, the chunk and the question id, so a resumed run writes exactly what an uninterrupted one would.
"""

import dataclasses
import os
import random
import zlib
from typing import Mapping, Optional, Sequence

from tqdm import tqdm

from tinythinker_jax import chains
from tinythinker_jax.data.records import Question, Rationale, iter_json_lines, write_json, write_jsonl
from tinythinker_jax.models import decoding
from tinythinker_jax.phases.markers import read_marker
from tinythinker_jax.reflection import pairs

PAIR_STAGES = ("recall", "analyze")
# The rules a chunk's rows were built under, recorded with the chunks: changed whenever the rows' meaning
# changes, so that chunks from older rules are refused instead of mixed in. 2: the official code's (texts
# closed, a pool of questions with teacher rationales, step-5 chains per recall-pair row).
PAIR_RULES = 2


@dataclasses.dataclass(frozen=True)
class PairSampling:
    """How phase 2 samples chains for its preference pairs (the decoder's token sampling is
    `decoding.SamplingConfig`)."""

    num_samples: int = 10  # N chains per question (step 1) and per recall-pair row's chosen recall (step 5)
    temperature: float = 0.7
    chunk_size: int = 256  # questions per resumable unit


def _seed(*parts) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode())


def pair_questions(questions: Sequence[Question], teacher: Mapping[str, Sequence[Rationale]],
                   max_questions: Optional[int] = None) -> list[Question]:
    """The questions self-reflection samples, as the official pool (`recall_single.json`).

    Args:
        questions: The training questions, in split order.
        teacher: The teacher's rationales by question id.
        max_questions: Keeps the first this many of the pool; None keeps all (the paper).

    Returns:
        The training questions that have teacher rationales (the chosen side's top-up), capped.
    """
    return [question for question in questions if teacher.get(question.id)][:max_questions]


def _pooled_by_recall(to_analyze: Sequence[tuple], second_chains: Sequence[list]) -> list[tuple]:
    """(question, step-1 chains, recall, step-5 chains) per distinct (question, recall), in first-row
    order: the chains of every recall-pair row that chose the recall, pooled as the official code
    groups its analyze samples by question and recall."""
    pooled: dict[tuple[str, str], tuple] = {}
    for (question, question_chains, recall), recall_chains in zip(to_analyze, second_chains):
        key = (question.id, recall)
        pooled.setdefault(key, (question, question_chains, recall, []))[3].extend(recall_chains)
    return list(pooled.values())


def sample_chunk(model, vocabulary, questions: Sequence[Question], teacher: Mapping[str, Sequence[Rationale]],
                 chain_settings: chains.ChainSettings, settings: PairSampling, seed: int) -> list[dict]:
    """Steps 1 and 5 for some questions.

    Args:
        model: M(i-1).
        vocabulary: Its vocabulary.
        questions: One chunk of questions.
        teacher: The teacher's rationales by question id.
        chain_settings: Decoding limits; the sampling configs are set here per step.
        settings: Samples per question and temperature.
        seed: The chunk's seed.

    Returns:
        Recall and analyze rows `{"stage", "id", "prompt", "chosen", "rejected"}`.
    """
    sampled = decoding.SamplingConfig(temperature=settings.temperature)
    greedy = decoding.SamplingConfig()
    n = settings.num_samples
    # Step 1: recall sampled, analyze and summarize greedy.
    recall_runner = chains.ChainRunner(model, vocabulary, dataclasses.replace(
        chain_settings, recall=sampled, analyze=greedy, summarize=greedy), progress="chains from sampled recalls")
    first_chains = recall_runner.run(questions, "full", num_chains=n, seed=_seed(seed, "recall"))
    rows, to_analyze = [], []
    for question, question_chains in zip(questions, first_chains):
        rng = random.Random(_seed(seed, "recall", question.id))
        rationales = teacher.get(question.id, ())
        recall_rows = pairs.recall_pairs(question, question_chains, [r.recall for r in rationales], rng)
        rows += [{"stage": "recall", "id": question.id, **row} for row in recall_rows]
        to_analyze += [(question, question_chains, recall) for recall in pairs.recalls_to_analyze(recall_rows)]
    if not to_analyze:
        return rows
    # Step 5: N chains per recall-pair row from its chosen recall, analyze sampled and summarize greedy.
    analyze_runner = chains.ChainRunner(model, vocabulary, dataclasses.replace(
        chain_settings, recall=greedy, analyze=sampled, summarize=greedy), progress="chains from sampled analyses")
    second_chains = analyze_runner.run([question for question, _, _ in to_analyze], "full", num_chains=n,
                                       seed=_seed(seed, "analyze"),
                                       recalls=[[recall] * n for _, _, recall in to_analyze])
    for question, question_chains, recall, recall_chains in _pooled_by_recall(to_analyze, second_chains):
        rng = random.Random(_seed(seed, "analyze", question.id, recall))
        fallback = pairs.fallback_analyses(question, recall, question_chains, teacher.get(question.id, ()))
        rows += [{"stage": "analyze", "id": question.id, **row}
                 for row in pairs.analyze_pairs(question, recall, recall_chains, fallback, rng)]
    return rows


def pairs_path(out_dir: str, stage: str, scored: bool = False) -> str:
    """A stage's pair file; `scored`: the copy that also holds the reference's log-likelihoods."""
    return os.path.join(out_dir, f"{stage}_pairs{'_scored' if scored else ''}.jsonl")


def _check_chunk_settings(chunk_dir: str, sampled_with: dict, write: bool) -> None:
    """Finished chunks are reused only under the settings that sampled them: after a change of questions,
    chunk size, seed, sampling settings or pair rules they would be stale, and a short last chunk would
    pass as complete."""
    path = os.path.join(chunk_dir, "settings.json")
    recorded = read_marker(path)
    if recorded is not None:
        changed = {key: (recorded.get(key), value) for key, value in sampled_with.items() if recorded.get(key) != value}
        if changed:
            raise ValueError(f"{path}: the finished chunks beside it were sampled under other settings "
                             f"(field: then, now): {changed}; restore them, or delete {chunk_dir} to sample again")
    elif write:
        write_json(path, sampled_with)


def generate_pairs(model, vocabulary, questions: Sequence[Question], teacher: Mapping[str, Sequence[Rationale]],
                   out_dir: str, chain_settings: chains.ChainSettings, settings: PairSampling,
                   seed: int, write: bool = True) -> dict[str, int]:
    """Writes `recall_pairs.jsonl` and `analyze_pairs.jsonl` under `out_dir` and returns their row counts.

    Finished chunks (`chunks/<k>.jsonl`) are reused. `write=False` (every process of a multi-host run
    but the first) computes the same chunks without writing them.
    """
    chunk_dir = os.path.join(out_dir, "chunks")
    _check_chunk_settings(chunk_dir, {
        "questions": len(questions), "question_ids_crc32": _seed(*(question.id for question in questions)),
        "seed": seed, "sampling": dataclasses.asdict(settings), "chains": dataclasses.asdict(chain_settings),
        "pair_rules": PAIR_RULES,
    }, write)
    starts = range(0, len(questions), settings.chunk_size)
    rows: list[dict] = []
    with tqdm(total=len(questions), desc="sampling chains", unit="question", disable=not write) as progress:
        for index, start in enumerate(starts):
            path = os.path.join(chunk_dir, f"{index:05d}.jsonl")
            chunk = questions[start:start + settings.chunk_size]
            if os.path.exists(path):
                chunk_rows = [row for _, row in iter_json_lines(path)]
            else:
                chunk_rows = sample_chunk(model, vocabulary, chunk, teacher, chain_settings, settings,
                                          _seed(seed, index))
                if write:
                    write_jsonl(path, chunk_rows)
            rows += chunk_rows
            progress.update(len(chunk))
    counts = {}
    for stage in PAIR_STAGES:
        stage_rows = [{key: row[key] for key in ("id", "prompt", "chosen", "rejected")}
                      for row in rows if row["stage"] == stage]
        if write:
            write_jsonl(pairs_path(out_dir, stage), stage_rows)
        counts[stage] = len(stage_rows)
    return counts
