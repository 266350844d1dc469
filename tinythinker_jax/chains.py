"""The three-stage chain at inference: recall -> analyze every option -> summarize.

Every prompt comes from `formats`, so the chain reads exactly what training wrote. Used by validation
during training, `tinythinker evaluate`, and self-reflection sampling.
"""

import collections
import dataclasses
from typing import Optional, Protocol, Sequence

import jax
from tqdm import tqdm

from tinythinker_jax import formats
from tinythinker_jax.data.records import Question
from tinythinker_jax.models import decoding
from tinythinker_jax.models.t5 import T5Transformer

GREEDY = decoding.SamplingConfig()


class Vocabulary(Protocol):
    """What the chains need of a vocabulary; `seqio.SentencePieceVocabulary` is one."""

    def encode(self, s: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class ChainSettings:
    """How the chain decodes. The limits are the official code's: generation stops at EOS or after 200
    tokens in every stage, and no input is cut. A finished row stops at its EOS, so the 200-token limit
    costs only the rows that run on; lower caps save time on models that ramble."""

    recall: decoding.SamplingConfig = GREEDY
    analyze: decoding.SamplingConfig = GREEDY
    summarize: decoding.SamplingConfig = GREEDY
    # None: inputs whole. A cap cuts longer inputs as seqio does (first max - 1 tokens, then EOS) and the
    # runner counts the cuts; training raises it to its widest input.
    max_input_length: Optional[int] = None
    max_decode_length: int = 200  # recall and analyses
    max_summary_length: int = 200  # "So the answer is option X." is 8 T5 tokens, then EOS
    batch_size: int = 64  # decoded rows per call: inputs x samples


@dataclasses.dataclass(frozen=True)
class Chain:
    recall: Optional[str]
    analyses: Optional[dict[str, str]]
    summary: str
    prediction: Optional[str]


class ChainRunner:
    """Runs chains for many questions at once, one batched decoding call per stage."""

    def __init__(self, model: T5Transformer, vocabulary: Vocabulary, settings: ChainSettings = ChainSettings(),
                 progress: Optional[str] = None):
        """`progress`: the description of a progress bar over the stage outputs of each `run` (process 0
        shows it; None: no bar)."""
        self.model, self.vocabulary, self.settings, self.progress = model, vocabulary, settings, progress
        self.inputs_cut = 0  # distinct stage inputs longer than `max_input_length`, cut to it
        self.tokens_cut = 0

    def _encode(self, text: str) -> list[int]:
        ids = list(self.vocabulary.encode(text)) + [self.model.config.eos_id]
        limit = self.settings.max_input_length
        if limit is not None and len(ids) > limit:
            self.inputs_cut += 1
            self.tokens_cut += len(ids) - limit
            ids = ids[: limit - 1] + [self.model.config.eos_id]
        return ids

    def _generate(self, texts: Sequence[str], sampling: decoding.SamplingConfig, max_length: int, seed: int,
                  bar: tqdm) -> list[str]:
        """One output per text, advancing `bar` by the texts' share of each decoded batch. Every distinct text
        is encoded once: greedy requests for it share one output; sampled ones are samples of that one input
        (`num_decodes`), the k-th request taking the k-th sample, so N chains of one question cost one encoder
        pass and one copy of its keys."""
        counts = collections.Counter(texts)
        if sampling.greedy:
            num_decodes, inputs = 1, list(counts)
        else:
            # A text asked for more often than the least-asked one comes back as several inputs.
            num_decodes = min(counts.values())
            inputs = [text for text, count in counts.items() for _ in range(-(-count // num_decodes))]
        eos_id = self.model.config.eos_id
        # At most `batch_size` rows (inputs x samples) per call; a power of two of inputs, which is its own
        # batch bucket, so a full call decodes no padding rows.
        inputs_per_call = 1 << max((self.settings.batch_size // num_decodes).bit_length() - 1, 0)
        start = bar.n

        def advance(inputs_done: int) -> None:
            bar.update(start + len(texts) * inputs_done // len(inputs) - bar.n)

        result = decoding.generate(
            self.model, [self._encode(t) for t in inputs], max_decode_length=max_length, sampling=sampling,
            num_decodes=num_decodes, seed=seed, batch_size=inputs_per_call, eos_id=eos_id,
            max_input_length=self.settings.max_input_length, on_batch=advance,
        )
        samples_of: collections.defaultdict[str, list[str]] = collections.defaultdict(list)
        for text, rows in zip(inputs, result.tokens):
            samples_of[text] += [self.vocabulary.decode(decoding.until_eos(row, eos_id)) for row in rows]
        if sampling.greedy:
            return [samples_of[text][0] for text in texts]
        unread = {text: iter(samples) for text, samples in samples_of.items()}
        return [next(unread[text]) for text in texts]

    def run(self, questions: Sequence[Question], stage_type: str = "full", num_chains: int = 1, seed: int = 0,
            recalls: Optional[Sequence[Sequence[str]]] = None) -> list[list[Chain]]:
        """`num_chains` chains per question; `recalls[q][c]`, when given, replaces the recall stage."""
        stages = formats.stages_of(stage_type)
        settings = self.settings
        keys = [(q, c) for q in range(len(questions)) for c in range(num_chains)]
        recalls_wanted = recalls is None and formats.RECALL in stages
        requests = [(q, c, label) for q, c in keys for label in questions[q].labels] \
            if formats.ANALYZE in stages else []
        with tqdm(total=len(keys) * (1 + recalls_wanted) + len(requests), desc=self.progress, unit="output",
                  leave=False, dynamic_ncols=True, disable=self.progress is None or jax.process_index() != 0) as bar:
            recall_of: dict = dict.fromkeys(keys)
            if recalls is not None:
                recall_of = {(q, c): recalls[q][c] for q, c in keys}
            elif recalls_wanted:
                texts = self._generate([formats.recall_input(questions[q]) for q, _ in keys], settings.recall,
                                       settings.max_decode_length, seed, bar)
                recall_of = dict(zip(keys, texts))
            analyses_of: dict = dict.fromkeys(keys)
            if requests:
                texts = self._generate(
                    [formats.analyze_input(questions[q], recall_of[(q, c)], label) for q, c, label in requests],
                    settings.analyze, settings.max_decode_length, seed + 1, bar,
                )
                analyses_of = {key: {} for key in keys}
                for (q, c, label), text in zip(requests, texts):
                    analyses_of[(q, c)][label] = text
            summaries = self._generate(
                [formats.summarize_input(questions[q], recall_of[(q, c)], analyses_of[(q, c)]) for q, c in keys],
                settings.summarize, settings.max_summary_length, seed + 2, bar,
            )
        chains: list[list[Chain]] = [[] for _ in questions]
        for (q, c), summary in zip(keys, summaries):
            chains[q].append(Chain(recall_of[(q, c)], analyses_of[(q, c)], summary, formats.parse_answer(summary)))
        return chains


def vote(chains: Sequence[Chain]) -> Optional[str]:
    """Self-consistency as the official `Counter(predictions).most_common(1)[0][0]`.

    "No answer" (None) is a candidate like any option, so a question where it is more common than every
    option gets None, which counts as wrong; a tie goes to the answer whose first chain comes first.

    Args:
        chains: One question's chains.

    Returns:
        The most common prediction, None included; None for no chains.
    """
    counts = collections.Counter(chain.prediction for chain in chains)
    return counts.most_common(1)[0][0] if counts else None


def accuracy(questions: Sequence[Question], predictions: Sequence[Optional[str]]) -> float:
    """Fraction of questions whose prediction is the gold label; no prediction counts as wrong."""
    return sum(p == q.answer for q, p in zip(questions, predictions)) / max(len(questions), 1)
