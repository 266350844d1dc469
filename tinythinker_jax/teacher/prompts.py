"""The chat-completion requests sent to the teacher, and their content-derived cache keys.

Two prompt modes: `project` (this module's instruction and message layout, the default) and
`paper` (the official TinyThinker request, built by `teacher.paper`).
"""

import dataclasses
import hashlib
import json
from typing import Any, Optional, Sequence

from tinythinker_jax.data.records import Question
from tinythinker_jax.teacher import paper
from tinythinker_jax.teacher.exemplars import Exemplar

PROJECT, PAPER = "project", "paper"
PROMPT_MODES = (PROJECT, PAPER)

INSTRUCTION = """\
You explain the answers to multiple-choice questions. For each question, first write its key \
information: the one or two sentences of general knowledge that the question turns on. Then \
evaluate every option, one line per option, saying whether it is correct or incorrect and why.

Reply in exactly this shape:
Key Information: <one or two sentences>
Explanations:
<label> is correct. Because <reason>
<label> is incorrect. Because <reason>

The question comes with each option's verdict already given. Keep those verdicts and give the \
reason behind each, with one line for every option."""

# The paper's teacher settings (GPT-4o, temperature 0.8, 256 tokens, 8 samples for CSQA, 4 otherwise).
DEFAULT_MODEL = "gpt-4o-2024-05-13"
DEFAULT_SAMPLES = {"csqa": 8, "toyworld": 8}
DEFAULT_SAMPLES_OTHERWISE = 4


@dataclasses.dataclass(frozen=True)
class TeacherSampling:
    model: str = DEFAULT_MODEL
    temperature: float = 0.8
    max_tokens: int = 256
    samples: int = 4  # valid samples wanted per question
    choices_per_request: int = 4  # the `n` of one request; 1 for servers that ignore `n`
    rounds: int = 3  # the first round plus retry rounds for questions still short of samples
    seed: int = 0
    temperature_step: float = 0.1  # added per retry round, so retries are not replays
    prompt_mode: str = PROJECT
    request_samples: Optional[int] = None  # asked per question in the first round; None: `samples`
    # The notebook's retry rule: a retry asks for as many samples as failed, at the same temperature,
    # with max_tokens doubled after a truncated sample; otherwise retries ask for the missing samples.
    paper_retry: bool = False

    def __post_init__(self):
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"unknown prompt mode {self.prompt_mode!r}; expected one of {PROMPT_MODES}")

    @property
    def first_round_samples(self) -> int:
        return self.request_samples or self.samples


@dataclasses.dataclass(frozen=True)
class Request:
    question_id: str
    body: dict[str, Any]
    # Paper-mode bodies carry no seed, so two requests for a question can be identical (a retry
    # that asks for as many samples as before); the round and index in `salt` keep their keys apart.
    salt: str = ""

    @property
    def key(self) -> str:
        """A hash of everything sent, and the salt: a changed prompt or setting never reuses a stale response."""
        canonical = json.dumps(self.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256((canonical + self.salt).encode()).hexdigest()[:32]


def _exemplar_text(exemplar: Exemplar) -> str:
    return f"Q: {exemplar.question.strip()}\nOptions: {exemplar.options.strip()}\n{exemplar.reply()}"


def system_message(exemplars: Sequence[Exemplar]) -> str:
    shots = "\n\n".join(_exemplar_text(e) for e in exemplars)
    return f"{INSTRUCTION}\n\nExamples:\n\n{shots}" if exemplars else INSTRUCTION


def user_message(question: Question) -> str:
    """The question, its options, then the verdicts: the gold option first, then the others."""
    options = ", ".join(f"{o.label}. {o.text}" for o in question.options)
    verdicts = [f"{question.answer} is correct. Because"]
    verdicts += [f"{label} is incorrect. Because" for label in question.labels if label != question.answer]
    return "\n".join([f"Q: {question.question}", f"Options: {options}", "Explanations:", *verdicts])


def _temperature(sampling: TeacherSampling, round_index: int) -> float:
    if sampling.paper_retry:
        return sampling.temperature  # the notebook re-sends the same request
    return round(min(2.0, sampling.temperature + round_index * sampling.temperature_step), 4)


def _body(question: Question, system: str, sampling: TeacherSampling, n: int, max_tokens: int, temperature: float,
          seed: int) -> dict[str, Any]:
    paper_mode = sampling.prompt_mode == PAPER
    user = paper.user_message(question) if paper_mode else user_message(question)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if paper_mode:  # the notebook's fields, in its order; it sent no seed
        return {"model": sampling.model, "messages": messages, "max_tokens": max_tokens, "n": n,
                "temperature": temperature}
    return {"model": sampling.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens,
            "n": n, "seed": seed}


def plan_requests(
    question: Question, wanted: int, round_index: int, system: str, sampling: TeacherSampling,
    max_tokens: Optional[int] = None,
) -> list[Request]:
    """Requests for `wanted` more samples of `question`.

    Seeds, temperature and salts depend only on the round, so a re-run plans the same requests and
    finds their responses in the cache.

    Args:
        question: the question asked.
        wanted: samples to ask for, split over requests of at most `sampling.choices_per_request`.
        round_index: 0 for the first round.
        system: the system message.
        sampling: the request settings.
        max_tokens: overrides `sampling.max_tokens` (the paper's retry rule doubles it).

    Returns:
        The requests, in order.
    """
    temperature = _temperature(sampling, round_index)
    requests = []
    for index, start in enumerate(range(0, wanted, sampling.choices_per_request)):
        n = min(sampling.choices_per_request, wanted - start)
        body = _body(question, system, sampling, n, max_tokens or sampling.max_tokens, temperature,
                     seed=sampling.seed + 1000 * round_index + index)
        salt = f"{round_index}.{index}" if sampling.prompt_mode == PAPER else ""
        requests.append(Request(question.id, body, salt))
    return requests
