"""The toy world: the built-in dataset, generated from a seed, with a template teacher.

Made-up entities ("zorblat") each belong to one made-up category ("flimber"), and every category
has one value per attribute ("flimbers eat copper"). A question asks about an entity's attribute
("What does a zorblat eat?") and states neither the entity's category nor the category's fact,
so the answer needs two facts that only the teacher's rationales state:

    A zorblat is a kind of flimber.   <- in rationales of training questions about zorblats
    Flimbers eat copper.              <- in rationales of training questions about other flimbers

Multiple-choice validation and test questions ask about (entity, attribute) pairs that no training
question asks about, so a student must combine the two facts rather than recall a seen answer;
that is what the recall and analyze stages make explicit.

Attribute values are everyday words from small fixed lists, so the SentencePiece vocabulary stays
small. One seed gives byte-identical files on every machine: all randomness comes from one
`random.Random(seed)` and every iteration runs over lists or insertion-ordered dicts.
"""

import dataclasses
import os
import random

import sentencepiece as spm

from tinythinker_jax import formats
from tinythinker_jax.data.records import Question, Rationale, TeacherRecord, make_question, write_json, write_jsonl

VARIANTS = ("mc5", "mc4", "yesno")
VOCABULARY_SIZE = 600
OPTION_COUNTS = {"mc5": 5, "mc4": 4}
MC_SPLITS = ("train", "dev", "test")
YESNO_FILE = "strategyqa_train.json"


@dataclasses.dataclass(frozen=True)
class Attribute:
    name: str
    values: tuple[str, ...]
    fact: str  # "{group} eat {value}": a fact about a plural group, lower case
    questions: tuple[str, str]  # wh-question about "a {entity}", then about "{entities}"
    claims: tuple[str, str]  # yes/no question about "a {entity}", then about "{entities}"


ATTRIBUTES = (
    Attribute(
        "food", ("copper", "sand", "moss", "seeds", "fish", "leaves", "honey", "bark"),
        "{group} eat {value}",
        ("What does a {entity} eat?", "What do {entities} eat?"),
        ("Does a {entity} eat {value}?", "Do {entities} eat {value}?"),
    ),
    Attribute(
        "habitat", ("caves", "rivers", "forests", "deserts", "swamps", "mountains", "lakes", "meadows"),
        "{group} live in {value}",
        ("Where does a {entity} live?", "Where do {entities} live?"),
        ("Does a {entity} live in {value}?", "Do {entities} live in {value}?"),
    ),
    Attribute(
        "colour", ("red", "blue", "green", "yellow", "purple", "orange", "white", "black"),
        "{group} are {value}",
        ("What colour is a {entity}?", "What colour are {entities}?"),
        ("Is a {entity} {value}?", "Are {entities} {value}?"),
    ),
    Attribute(
        "size", ("a mouse", "a cat", "a dog", "a horse", "a bus", "a house", "a bee", "a sheep"),
        "{group} are as big as {value}",
        ("What is a {entity} as big as?", "What are {entities} as big as?"),
        ("Is a {entity} as big as {value}?", "Are {entities} as big as {value}?"),
    ),
    Attribute(
        "sound", ("a hum", "a whistle", "a buzz", "a squeak", "a roar", "a hiss", "a chirp", "a click"),
        "{group} make {value}",
        ("What sound does a {entity} make?", "What sound do {entities} make?"),
        ("Does a {entity} make {value}?", "Do {entities} make {value}?"),
    ),
    Attribute(
        "legs", ("two", "three", "four", "five", "six", "eight", "ten", "twelve"),
        "{group} have {value} legs",
        ("How many legs does a {entity} have?", "How many legs do {entities} have?"),
        ("Does a {entity} have {value} legs?", "Do {entities} have {value} legs?"),
    ),
    Attribute(
        "cover", ("fur", "scales", "feathers", "spikes", "slime", "wool", "hair", "dust"),
        "{group} are covered in {value}",
        ("What is a {entity} covered in?", "What are {entities} covered in?"),
        ("Is a {entity} covered in {value}?", "Are {entities} covered in {value}?"),
    ),
    Attribute(
        "fear", ("water", "fire", "wind", "snow", "light", "noise", "thunder", "birds"),
        "{group} are afraid of {value}",
        ("What is a {entity} afraid of?", "What are {entities} afraid of?"),
        ("Is a {entity} afraid of {value}?", "Are {entities} afraid of {value}?"),
    ),
)

# Names are consonant-vowel-consonant syllables; no coda is s, x or z, so a plural is name + "s".
# Category names end in "er" and entity names never do, so the two kinds stay apart.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "t", "v", "z",
           "bl", "br", "dr", "fl", "gl", "gr", "kr", "pl", "sk", "sl", "sn", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("b", "d", "g", "k", "l", "m", "n", "p", "r", "t")
_ENTITY_CODAS = tuple(coda for coda in _CODAS if coda != "r")

# Every training question about a pair is asked this many times, with fresh distractors and
# gold position; held-out pairs fewer times, since they only measure.
_MC_DRAWS = {"train": 3, "dev": 2, "test": 2}

# The teacher's phrasings; rationale i of a record uses phrasing i % 2. Membership always comes
# before the category fact, so a student writes the category before it needs the category's value.
_RECALLS = ("A {entity} is a kind of {category}. {Fact}.", "{Entities} are {categories}, and {fact}.")
_FITS = ("{fact}, and a {entity} is a {category}.", "a {entity} is a {category}, and {fact}.")
_MISFITS = ("{fact}, not {other}.", "not {other}, since {fact}.")


@dataclasses.dataclass(frozen=True)
class Truth:
    """The facts behind one question, against which a student's chain is checked.

    Attributes:
        entity: The entity the question asks about.
        category: The entity's category.
        value: The entity's value of the attribute asked about (its category's).
        fitting_labels: The options whose analysis should say they fit the facts: the gold option of a
            multiple-choice question; both options of a yes/no question whose claim is true (the two share one
            explanation), none when it is false.
    """

    entity: str
    category: str
    value: str
    fitting_labels: frozenset[str]


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What the template teacher needs to know about one generated question."""
    question: Question
    entity: str
    attribute: Attribute
    claim: str | None  # the value a yes/no question asks about; None for multiple choice


@dataclasses.dataclass
class ToyWorld:
    seed: int
    entities: dict[str, str]  # entity -> its category
    facts: dict[str, dict[str, str]]  # category -> attribute name -> value
    held_out: dict[str, dict[str, str]]  # entity -> held-out attribute name -> "dev" or "test"
    # variant -> file split -> questions; yes/no has the single split "train", like StrategyQA
    questions: dict[str, dict[str, tuple[Question, ...]]] = dataclasses.field(default_factory=dict)
    _specs: dict[str, _Spec] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls, seed: int = 0, num_categories: int = 8, entities_per_category: int = 7) -> "ToyWorld":
        """The world for `seed`, with every variant's questions."""
        if not 5 <= num_categories <= len(ATTRIBUTES[0].values):
            # Fewer than 5 categories would leave mc5 distractors that are never any category's
            # value, which a student could learn to rule out without knowing anything.
            raise ValueError(f"num_categories must be 5..{len(ATTRIBUTES[0].values)}, got {num_categories}")
        if entities_per_category < 2:
            raise ValueError("entities_per_category must be at least 2: a held-out pair's category fact "
                             "has to be taught through another entity of the category")
        rng = random.Random(seed)
        names = _distinct_names(rng, num_categories, num_categories * entities_per_category)
        categories, entity_names = names[:num_categories], names[num_categories:]
        entities = {name: categories[i // entities_per_category] for i, name in enumerate(entity_names)}
        facts: dict[str, dict[str, str]] = {category: {} for category in categories}
        for attribute in ATTRIBUTES:
            for category, value in zip(categories, rng.sample(attribute.values, num_categories)):
                facts[category][attribute.name] = value
        world = cls(seed, entities, facts, _hold_out(rng, categories, entities))
        for variant in VARIANTS:
            world.questions[variant] = world._make_questions(rng, variant)
        return world

    @property
    def categories(self) -> list[str]:
        return list(self.facts)

    def write_raw(self, raw_dir: str, variant: str) -> list[str]:
        """Writes `variant` in its benchmark's upstream layout under `raw_dir`; returns the paths.

        mc5 and mc4 follow OpenBookQA (train/dev/test.jsonl); yesno follows StrategyQA (one JSON
        list, which the project splits itself).
        """
        splits = self._questions_of(variant)
        if variant == "yesno":
            path = os.path.join(raw_dir, YESNO_FILE)
            write_json(path, [_strategyqa_row(q) for q in splits["train"]])
            return [path]
        paths = []
        for split in MC_SPLITS:
            path = os.path.join(raw_dir, f"{split}.jsonl")
            write_jsonl(path, (_openbookqa_row(q) for q in splits[split]))
            paths.append(path)
        return paths

    def teacher_record(self, question: Question, num_samples: int = 2, noise: float = 0.0) -> TeacherRecord:
        """The template teacher: `num_samples` rationales stating the facts behind the answer.

        With `noise` > 0 each rationale, independently with that probability, puts the entity in a wrong
        category and gives that category the answer's value ("A zorblat is a kind of glober. Globers eat
        copper."): still the gold answer, as a teacher shown the answer writes, but by a wrong membership and a
        wrong category fact, as a real teacher's hallucinations are. Which rationales are noisy depends only on
        the world's seed, the question and the sample, so a setting gives the same records everywhere.
        """
        if not 0.0 <= noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {noise}")
        if question.id not in self._specs:
            raise KeyError(f"question {question.id!r} is not a question of the toy world with seed {self.seed}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        spec = self._specs[question.id]
        if (question.options, question.answer) != (spec.question.options, spec.question.answer):
            raise ValueError(f"question {question.id!r} has other options or answer than the toy world's")
        rationales = tuple(self._rationale(spec, i % len(_RECALLS), self._stated_category(spec, i, noise))
                           for i in range(num_samples))
        return TeacherRecord(question, rationales)

    def truth(self, question_id: str) -> Truth:
        """The facts behind the world's question `question_id`.

        Raises:
            KeyError: `question_id` is not a question of this world.
        """
        if question_id not in self._specs:
            raise KeyError(f"question {question_id!r} is not a question of the toy world with seed {self.seed}")
        spec = self._specs[question_id]
        value = self._value(spec.entity, spec.attribute)
        if spec.claim is None:
            fitting = frozenset({spec.question.answer})
        else:
            fitting = frozenset(spec.question.labels) if spec.claim == value else frozenset()
        return Truth(spec.entity, self.entities[spec.entity], value, fitting)

    def _stated_category(self, spec: _Spec, sample: int, noise: float) -> str:
        """The category rationale `sample` of a question puts the entity in: its own, or a wrong one."""
        category = self.entities[spec.entity]
        draw = random.Random(f"{self.seed}/{spec.question.id}/{sample}")
        if noise and draw.random() < noise:
            return draw.choice([other for other in self.categories if other != category])
        return category

    def corpus(self) -> list[str]:
        """Every line of text the world's questions, rationales and the stage format can produce."""
        lines: dict[str, None] = {}  # an ordered set, so the corpus is deterministic
        for variant in VARIANTS:
            for questions in self.questions[variant].values():
                for question in questions:
                    for rationale in self.teacher_record(question, num_samples=len(_RECALLS)).rationales:
                        text = formats.summarize_input(question, rationale.recall, rationale.analyze)
                        lines.update(dict.fromkeys(text.split("\n")))
        lines.update(dict.fromkeys(formats.summary_target(label) for label in "ABCDE"))
        return list(lines)

    def train_vocabulary(self, path: str) -> None:
        """Trains the world's SentencePiece model on its `corpus` and writes it to `path` (`*.model`)."""
        # T5's id conventions (pad 0, eos 1, unk 2, no bos) so the model code treats both vocabularies alike;
        # one thread keeps the trained model identical run to run.
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(self.corpus()), model_prefix=path[: -len(".model")], vocab_size=VOCABULARY_SIZE,
            model_type="bpe", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
            num_threads=1, minloglevel=2, character_coverage=1.0,
        )

    def _questions_of(self, variant: str) -> dict[str, tuple[Question, ...]]:
        if variant not in self.questions:
            raise ValueError(f"unknown toy-world variant {variant!r}; expected one of {list(VARIANTS)}")
        return self.questions[variant]

    def _make_questions(self, rng: random.Random, variant: str) -> dict[str, tuple[Question, ...]]:
        if variant == "yesno":
            return {"train": self._yes_no_questions(rng)}
        return {split: self._multiple_choice_questions(rng, variant, split) for split in MC_SPLITS}

    def _pairs(self, split: str) -> list[tuple[str, Attribute]]:
        """The (entity, attribute) pairs that multiple-choice questions of `split` ask about."""
        return [
            (entity, attribute)
            for entity, held_out in self.held_out.items()
            for attribute in ATTRIBUTES
            if held_out.get(attribute.name, "train") == split
        ]

    def _multiple_choice_questions(self, rng: random.Random, variant: str, split: str) -> tuple[Question, ...]:
        num_options = OPTION_COUNTS[variant]
        labels = "ABCDE"[:num_options]
        drafts = [
            (entity, attribute, template)
            for entity, attribute in self._pairs(split)
            for template in attribute.questions
            for _ in range(_MC_DRAWS[split])
        ]
        rng.shuffle(drafts)
        # Each label is gold equally often, so a label prior predicts nothing.
        gold_slots = [i % num_options for i in range(len(drafts))]
        rng.shuffle(gold_slots)
        questions = []
        for number, ((entity, attribute, template), gold_slot) in enumerate(zip(drafts, gold_slots)):
            gold = self._value(entity, attribute)
            values = rng.sample(self._distractors(attribute, gold), num_options - 1)
            values.insert(gold_slot, gold)
            question = make_question(
                f"toy-{variant}-{split}-{number:04d}", template.format(**_names(entity)),
                list(zip(labels, values)), labels[gold_slot], self._fact_sentences(entity, attribute),
            )
            self._specs[question.id] = _Spec(question, entity, attribute, claim=None)
            questions.append(question)
        return tuple(questions)

    def _yes_no_questions(self, rng: random.Random) -> tuple[Question, ...]:
        # Every pair is asked in both phrasings, once true and once about another value, so the
        # answers are balanced and each fact recurs often enough to survive any 80/10/10 split.
        drafts = []
        for entity in self.entities:
            for attribute in ATTRIBUTES:
                gold = self._value(entity, attribute)
                wrong = rng.sample(self._distractors(attribute, gold), len(attribute.claims))
                for template, other in zip(attribute.claims, wrong):
                    drafts += [(entity, attribute, template, gold), (entity, attribute, template, other)]
        rng.shuffle(drafts)
        questions = []
        for number, (entity, attribute, template, claim) in enumerate(drafts):
            question = make_question(
                f"toy-yesno-{number:04d}", template.format(value=claim, **_names(entity)),
                [("A", "yes"), ("B", "no")], "A" if claim == self._value(entity, attribute) else "B",
                self._fact_sentences(entity, attribute),
            )
            self._specs[question.id] = _Spec(question, entity, attribute, claim=claim)
            questions.append(question)
        return tuple(questions)

    def _value(self, entity: str, attribute: Attribute) -> str:
        return self.facts[self.entities[entity]][attribute.name]

    def _distractors(self, attribute: Attribute, gold: str) -> list[str]:
        """The other categories' values: each is some category's answer, so none is ruled out a priori."""
        return [facts[attribute.name] for facts in self.facts.values() if facts[attribute.name] != gold]

    def _fact_sentences(self, entity: str, attribute: Attribute) -> tuple[str, str]:
        slots = self._slots(entity, attribute)
        return (f"A {entity} is a kind of {slots['category']}.", f"{slots['Fact']}.")

    def _slots(self, entity: str, attribute: Attribute, category: str | None = None) -> dict[str, str]:
        """The template slots of a rationale about `entity`'s `attribute`; `category`: the one it states (a
        noisy teacher's wrong one), which gets the entity's true value."""
        category = category or self.entities[entity]
        fact = attribute.fact.format(group=category + "s", value=self._value(entity, attribute))
        return {**_names(entity), "category": category, "categories": category + "s",
                "fact": fact, "Fact": _capitalise(fact)}

    def _rationale(self, spec: _Spec, phrasing: int, category: str | None = None) -> Rationale:
        slots = self._slots(spec.entity, spec.attribute, category)
        recall = _RECALLS[phrasing].format(**slots)
        if spec.claim is not None:
            # "yes" and "no" share one explanation: whether the claimed value is the category's.
            fits = spec.claim == self._value(spec.entity, spec.attribute)
            text = (_FITS if fits else _MISFITS)[phrasing].format(other=spec.claim, **slots)
            return Rationale(recall, dict.fromkeys(spec.question.labels, text))
        gold = self._value(spec.entity, spec.attribute)
        analyze = {
            option.label: (_FITS if option.text == gold else _MISFITS)[phrasing].format(other=option.text, **slots)
            for option in spec.question.options
        }
        return Rationale(recall, analyze)


def _distinct_names(rng: random.Random, num_categories: int, num_entities: int) -> list[str]:
    """Category names ("flimber") then entity names ("zorblat"), all different."""
    names: list[str] = []
    while len(names) < num_categories + num_entities:
        stem = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        if len(names) < num_categories:
            name = stem + rng.choice(_ONSETS[:13]) + "er"
        else:
            name = stem + rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ENTITY_CODAS)
        if name not in names:
            names.append(name)
    return names


def _hold_out(rng: random.Random, categories: list[str], entities: dict[str, str]) -> dict[str, dict[str, str]]:
    """Per entity, one attribute whose questions go to dev and one to test, the rest to train.

    Within a category the held-out attributes walk along a shuffled attribute order two at a
    time, so an attribute is held out for at most ceil(n/4) of a category's n >= 2 entities and
    some other entity of the category always teaches its fact in training.
    """
    held_out = {}
    for category in categories:
        order = [attribute.name for attribute in rng.sample(ATTRIBUTES, len(ATTRIBUTES))]
        members = [entity for entity, of in entities.items() if of == category]
        for i, entity in enumerate(members):
            held_out[entity] = {order[2 * i % len(order)]: "dev", order[(2 * i + 1) % len(order)]: "test"}
    return held_out


def _names(entity: str) -> dict[str, str]:
    return {"entity": entity, "entities": entity + "s", "Entities": _capitalise(entity + "s")}


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def _openbookqa_row(question: Question) -> dict:
    return {
        "id": question.id,
        "answerKey": question.answer,
        "question": {
            "stem": question.question,
            "choices": [{"label": o.label, "text": o.text} for o in question.options],
        },
    }


def _strategyqa_row(question: Question) -> dict:
    return {"qid": question.id, "question": question.question, "answer": question.answer == "A",
            "facts": list(question.facts)}
