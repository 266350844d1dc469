"""The official TinyThinker teacher request (`--prompt_mode paper`), built as the authors' notebook builds it.

`datasets/Prompt Engineering.ipynb` of github.com/shengminp/TinyThinker (MIT), cells 3-7:
`reasoning_prompt_system` puts the instruction of `request.json` before every exemplar of
`<dataset>_cot.json`, each between `###` lines, in an order drawn by `random.sample`;
`reasoning_prompt_user` gives the question, its options and the verdicts to explain, gold first.
The notebook drew the order from Python's global, unseeded `random`, so its order cannot be
reproduced, only its construction: here `random.Random(seed).sample` draws it, which is the order
the notebook would have drawn right after `random.seed(seed)`.
"""

import random
from typing import Optional, Sequence

from tinythinker_jax.data.records import DataError, Question, load_json
from tinythinker_jax.teacher.exemplars import Exemplar


def load_instruction(path: str) -> str:
    """The instruction text of an official `request.json` (its `Key` field), verbatim.

    Args:
        path: the JSON file, an object with the instruction under `Key`.

    Returns:
        The instruction, with its whitespace as in the file (the notebook strips only the whole message).
    """
    request = load_json(path)
    if not isinstance(request, dict) or not isinstance(request.get("Key"), str) or not request["Key"].strip():
        raise DataError(path, None, "Key", "expected the instruction as a non-empty string")
    return request["Key"]


def _shot(exemplar: Exemplar) -> str:
    explanations = "\n".join(exemplar.explanations)
    return (f"\n###\n{exemplar.question}\nOptions: {exemplar.options}\n"
            f"Key Information: {exemplar.key_information}\nExplanations: {explanations}\n###\n")


def system_message(instruction: str, exemplars: Sequence[Exemplar], seed: int, k: Optional[int] = None) -> str:
    """The notebook's system message: the instruction, then k exemplars in a seeded random order.

    Args:
        instruction: the `Key` text of `request.json`.
        exemplars: the exemplars as loaded from `<dataset>_cot.json`, in file order.
        seed: seeds the draw of the exemplars and their order.
        k: how many to draw (the notebook's `num_shot`); None draws all of them, as the paper did.

    Returns:
        `instruction` followed by the drawn exemplars, stripped as a whole.
    """
    drawn = random.Random(seed).sample(list(exemplars), k=len(exemplars) if k is None else k)
    return f"{instruction}{''.join(_shot(e) for e in drawn)}".strip()


def user_message(question: Question) -> str:
    """The notebook's user message: question, options, an empty `Key Information:` line, then the verdicts.

    The gold verdict follows `Explanations: ` on the same line; the other options follow one per
    line in label order, each with an open `Because` for the teacher to complete.
    """
    options = ", ".join(f"{o.label}. {o.text}" for o in question.options).strip()
    others = "".join(f"{label} is incorrect. Because\n" for label in question.labels if label != question.answer)
    return "".join([
        f"{question.question}\n",
        f"Options: {options}\n",
        "Key Information:\n",
        f"Explanations: {question.answer} is correct. Because\n{others}",
    ]).strip()
