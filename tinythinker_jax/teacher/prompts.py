"""The chat-completion requests sent to the teacher, and their content-derived cache keys."""

import dataclasses
import hashlib
import json
from typing import Any, Sequence

from tinythinker_jax.data.records import Question
from tinythinker_jax.teacher.exemplars import Exemplar

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
class Sampling:
    model: str = DEFAULT_MODEL
    temperature: float = 0.8
    max_tokens: int = 256
    samples: int = 4  # valid samples wanted per question
    choices_per_request: int = 4  # the `n` of one request; 1 for servers that ignore `n`
    rounds: int = 3  # the first round plus retry rounds for questions still short of samples
    seed: int = 0
    temperature_step: float = 0.1  # added per retry round, so retries are not replays


@dataclasses.dataclass(frozen=True)
class Request:
    question_id: str
    body: dict[str, Any]

    @property
    def key(self) -> str:
        """A hash of everything sent, so a changed prompt or setting never reuses a stale response."""
        canonical = json.dumps(self.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _exemplar_text(exemplar: Exemplar) -> str:
    return f"Q: {exemplar.question}\nOptions: {exemplar.options}\n{exemplar.reply()}"


def system_message(exemplars: Sequence[Exemplar]) -> str:
    shots = "\n\n".join(_exemplar_text(e) for e in exemplars)
    return f"{INSTRUCTION}\n\nExamples:\n\n{shots}" if exemplars else INSTRUCTION


def user_message(question: Question) -> str:
    """The question, its options, then the verdicts: the gold option first, then the others."""
    options = ", ".join(f"{o.label}. {o.text}" for o in question.options)
    verdicts = [f"{question.answer} is correct. Because"]
    verdicts += [f"{label} is incorrect. Because" for label in question.labels if label != question.answer]
    return "\n".join([f"Q: {question.question}", f"Options: {options}", "Explanations:", *verdicts])


def plan_requests(question: Question, wanted: int, round_index: int, system: str, sampling: Sampling) -> list[Request]:
    """Requests for `wanted` more samples; seeds and temperature depend only on the round, so a
    re-run plans the same requests and finds their responses in the cache."""
    temperature = round(min(2.0, sampling.temperature + round_index * sampling.temperature_step), 4)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user_message(question)}]
    requests = []
    for index, start in enumerate(range(0, wanted, sampling.choices_per_request)):
        body = {
            "model": sampling.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": sampling.max_tokens,
            "n": min(sampling.choices_per_request, wanted - start),
            "seed": sampling.seed + 1000 * round_index + index,
        }
        requests.append(Request(question.id, body))
    return requests
