"""Stage 2, entity extraction (Appendix A, second stage): the main entity of each caption and its background.

The paper asks Qwen2.5 for the caption's main entity and a judgement of the background's complexity, and drops
clips without one clear subject or with a complex background. Two extractors share one interface,
``extract(caption) -> EntityJudgement``:

* :class:`LLMEntityExtractor` prompts an instruction LLM (Qwen2.5-Instruct through transformers, weights from a
  path) with :data:`SYSTEM_PROMPT` / :data:`USER_TEMPLATE` and reads its answer with the strict
  :func:`parse_llm_json`;
* :class:`RuleEntityExtractor` is deterministic and offline: the subject noun phrase of the first sentence (after
  framing phrases such as "The video shows"), whose head noun is in a small lexicon of segmentable things; plural
  heads, counts ("two", "a group of") and conjunctions ("a man and a woman") mean several entities; background
  keywords ("crowd", "busy street", ...) mean a complex background.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from customvideox.curation.manifest import Decision

SIMPLE, COMPLEX = "simple", "complex"


@dataclass(frozen=True)
class EntityJudgement:
    """What an extractor says about one caption."""

    entity: str | None  # the main entity as a short noun phrase ("red sports car"), None when there is none
    entity_count: int  # how many distinct main subjects the caption describes
    background: str  # "simple" or "complex"
    source: str = "rule"


@runtime_checkable
class EntityExtractor(Protocol):
    source: str

    def extract(self, caption: str) -> EntityJudgement: ...


class EntityParseError(ValueError):
    """The LLM's answer is not the JSON object the prompt asks for."""


def decide(judgement: EntityJudgement) -> Decision:
    """Keep a clip with exactly one entity and a simple background; otherwise drop it with the reason."""
    values = {"entity": judgement.entity or "", "entity_count": int(judgement.entity_count),
              "background": judgement.background, "extractor": judgement.source}
    if not judgement.entity or judgement.entity_count == 0:
        return Decision.drop("no_entity", "the caption names no clear main entity", **values)
    if judgement.entity_count > 1:
        return Decision.drop("multiple_entities", f"{judgement.entity_count} main subjects (e.g. "
                             f"{judgement.entity!r}); a single entity is needed", **values)
    if judgement.background != SIMPLE:
        return Decision.drop("complex_background", "the caption describes a complex background", **values)
    return Decision.keep(**values)


# ------------------------------------------------------------------------------------------------- rules

_CATEGORIES: dict[str, str] = {
    "human": "person man woman boy girl child kid baby toddler lady gentleman guy chef dancer skier surfer "
             "skateboarder cyclist runner athlete soldier musician guitarist singer pianist player worker farmer "
             "doctor nurse student teacher model actor actress businessman businesswoman astronaut knight",
    "animal": "dog puppy cat kitten horse pony cow bull sheep goat pig bird eagle hawk owl parrot duck swan goose "
              "chicken rooster penguin flamingo fish shark dolphin whale turtle tortoise frog lizard snake "
              "crocodile alligator lion tiger leopard cheetah bear panda monkey gorilla chimpanzee elephant "
              "giraffe zebra deer fox wolf rabbit bunny squirrel hamster mouse butterfly bee spider jellyfish "
              "octopus crab camel kangaroo koala calf cub foal lamb retriever terrier poodle bulldog corgi husky",
    "vehicle": "car truck bus van motorcycle motorbike bicycle bike scooter train tram boat ship yacht sailboat "
               "canoe kayak airplane plane aircraft jet helicopter drone tractor jeep taxi suv rocket",
    "building": "building house cottage cabin castle church cathedral temple tower skyscraper lighthouse bridge "
                "windmill barn palace mosque pagoda",
    "object": "statue sculpture robot toy teddy doll ball balloon vase cup mug bottle lamp clock chair guitar "
              "piano violin umbrella backpack bag hat shoe sneaker watch camera phone laptop book cake pizza "
              "burger apple flower rose sunflower tulip tree cactus kite",
    "nature": "mountain waterfall volcano iceberg rock island",
}
#: head noun -> category, the lexicon of segmentable entities (the paper's humans, animals, vehicles, buildings,
#: natural scenes and everyday objects).
LEXICON: dict[str, str] = {word: cat for cat, words in _CATEGORIES.items() for word in words.split()}
_IRREGULAR_PLURALS = {"people": "person", "men": "man", "women": "woman", "children": "child", "kids": "kid",
                      "geese": "goose", "mice": "mouse", "teeth": "tooth", "feet": "foot", "puppies": "puppy",
                      "butterflies": "butterfly", "ponies": "pony", "ladies": "lady", "bunnies": "bunny"}
_INVARIANT = {"sheep", "fish", "deer", "aircraft"}  # same form in singular and plural: counted as one
_DETERMINERS = {"a", "an", "the", "this", "that", "one", "single", "lone", "solitary", "its", "his", "her"}
_COUNTS = {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many", "multiple",
           "some", "numerous", "few", "various", "both", "dozens", "hundreds", "these", "those"}
_COLLECTIVES = {"group", "pair", "couple", "herd", "flock", "crowd", "team", "family", "pack", "school", "swarm",
                "fleet", "line", "row", "bunch", "number", "collection", "set"}
#: words that end the subject noun phrase before its head noun is found (verbs, prepositions, conjunctions)
_BOUNDARY = {"is", "are", "was", "were", "be", "being", "has", "have", "with", "in", "on", "at", "of", "by", "from",
             "into", "over", "under", "through", "across", "along", "near", "and", "or", "while", "as", "who",
             "which", "that", "walks", "runs", "stands", "sits", "flies", "swims", "drives", "moves", "rides"}
_FRAMING = re.compile(
    r"^(?:(?:in|throughout)\s+)?(?:this|the)\s+(?:video|clip|footage|scene|shot|sequence|animation)"
    r"(?:\s+clip)?\s*,?\s*(?:shows|features|depicts|captures|showcases|presents|displays|highlights|begins with|"
    r"opens with|focuses on|is of|we see|there is|there's)?\s*"
    r"|^(?:a|an)\s+(?:video|clip|footage|close-up|closeup|wide|aerial|tracking|slow-motion|medium)?\s*"
    r"(?:shot|view|video|clip|footage)?\s*of\s+"
    r"|^(?:footage|video|close-up|closeup)\s+of\s+"
    r"|^(?:we see|there is|there's|here is)\s+"
)
#: phrases that make a background complex (busy, crowded or cluttered scenes)
COMPLEX_BACKGROUND_TERMS = (
    "crowd", "crowded", "crowds", "busy", "bustling", "traffic", "rush hour", "market", "marketplace", "festival",
    "parade", "concert", "stadium", "cluttered", "messy", "chaotic", "many people", "other people",
    "several people", "group of people", "pedestrians", "shoppers", "passersby", "city street", "downtown",
    "shopping mall", "intersection", "protest", "party", "nightclub", "audience", "spectators", "tourists",
)
_COMPLEX_RE = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in COMPLEX_BACKGROUND_TERMS) + r")\b")
_WORD = re.compile(r"[a-z][a-z'\-]*|\d+|[.,;:!?]")


def singular(word: str) -> tuple[str, bool]:
    """(lexicon form, is_plural) of ``word``; ``("", False)`` when it is not a lexicon noun."""
    if word in LEXICON:
        return word, False
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word], True
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in LEXICON:
            return word[: -len(suffix)] + replacement, True
    return "", False


class RuleEntityExtractor:
    """Deterministic, offline entity extraction (see the module docstring); ``extract(caption)``."""

    source = "rule"

    def __init__(self, max_phrase_words: int = 6) -> None:
        self.max_phrase_words = max_phrase_words

    def subject_phrase(self, caption: str) -> tuple[str | None, int]:
        """The subject noun phrase of the first sentence and how many entities it denotes."""
        text = " ".join(caption.lower().split())
        text = _FRAMING.sub("", text, count=1)
        tokens = _WORD.findall(text)
        count, start = 1, 0
        while start < len(tokens) and (tokens[start] in _DETERMINERS or tokens[start] in _COUNTS
                                       or tokens[start].isdigit()):
            if tokens[start] in _COUNTS or (tokens[start].isdigit() and int(tokens[start]) > 1):
                count = 2
            start += 1
        if start + 1 < len(tokens) and tokens[start] in _COLLECTIVES and tokens[start + 1] == "of":
            count, start = 2, start + 2
            while start < len(tokens) and tokens[start] in _DETERMINERS | _COUNTS:
                start += 1
        for end in range(start, min(len(tokens), start + self.max_phrase_words)):
            token = tokens[end]
            if not re.match(r"[a-z]", token) or token in _BOUNDARY:
                return None, 0
            lemma, plural = singular(token)
            if not lemma:
                continue
            while end + 1 < len(tokens) and singular(tokens[end + 1])[0]:  # compound head: "police car"
                end += 1
                lemma, plural = singular(tokens[end])
            phrase_tokens = tokens[start:end] + [lemma]
            if plural and lemma not in _INVARIANT:
                count = 2
            if self._conjoined_entity(tokens, end + 1):
                count = 2
            return " ".join(phrase_tokens), count
        return None, 0

    @staticmethod
    def _conjoined_entity(tokens: list[str], index: int) -> bool:
        """``... and (a|his|two)? (adjective)? <lexicon noun>`` right after the head: a second subject."""
        if index >= len(tokens) or tokens[index] not in {"and", "&"}:
            return False
        for token in tokens[index + 1:index + 5]:
            if token in _BOUNDARY or not re.match(r"[a-z]", token):
                return False
            if singular(token)[0]:
                return True
        return False

    def extract(self, caption: str) -> EntityJudgement:
        entity, count = self.subject_phrase(caption)
        background = COMPLEX if _COMPLEX_RE.search(caption.lower()) else SIMPLE
        return EntityJudgement(entity, count, background, self.source)


# ------------------------------------------------------------------------------------------------- LLM

SYSTEM_PROMPT = (
    "You annotate video captions for a subject-driven video generation dataset. "
    "Answer with one JSON object and nothing else."
)
USER_TEMPLATE = """Caption: "{caption}"

Read the caption and answer three questions:
1. main_entity: the single main subject of the video as a short noun phrase of at most 5 words that an open-set
   object detector can find (for example "golden retriever", "red sports car", "woman"), or null if the caption
   has no clear main subject.
2. entity_count: how many distinct main subjects the video shows (an integer; 2 for "a man and a woman",
   3 for "three dogs").
3. background: "simple" if the background is plain or uncluttered (sky, wall, field, water, studio), "complex" if
   it is busy, crowded or cluttered (crowds, traffic, markets, many objects).

Answer exactly in this form:
{{"main_entity": "...", "entity_count": 1, "background": "simple"}}"""

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_LLM_KEYS = {"main_entity", "entity_count", "background"}


def build_messages(caption: str) -> list[dict[str, str]]:
    """The chat messages for one caption (system prompt + the filled :data:`USER_TEMPLATE`)."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(caption=caption.replace('"', "'"))}]


def parse_llm_json(text: str) -> EntityJudgement:
    """Parse the LLM's answer strictly.

    Accepted: one JSON object (optionally inside a single ```json fence) with exactly the keys ``main_entity``
    (a non-empty string of at most 8 words, or null), ``entity_count`` (a non-negative integer, not a bool) and
    ``background`` (``"simple"`` or ``"complex"``). Anything else raises.

    Raises:
        EntityParseError: saying what is wrong, with the start of the offending text.
    """
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    shown = repr(text[:120])
    try:
        obj: Any = json.loads(stripped)
    except json.JSONDecodeError as error:
        raise EntityParseError(f"not a JSON object ({error.msg}): {shown}") from None
    if not isinstance(obj, dict):
        raise EntityParseError(f"expected a JSON object, got {type(obj).__name__}: {shown}")
    if set(obj) != _LLM_KEYS:
        missing, extra = sorted(_LLM_KEYS - set(obj)), sorted(set(obj) - _LLM_KEYS)
        raise EntityParseError(f"keys must be {sorted(_LLM_KEYS)} (missing {missing}, unexpected {extra}): {shown}")
    entity, count, background = obj["main_entity"], obj["entity_count"], obj["background"]
    if entity is not None and (not isinstance(entity, str) or not entity.strip() or len(entity.split()) > 8):
        raise EntityParseError(f"main_entity must be a short noun phrase or null, got {entity!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise EntityParseError(f"entity_count must be a non-negative integer, got {count!r}")
    if background not in (SIMPLE, COMPLEX):
        raise EntityParseError(f"background must be 'simple' or 'complex', got {background!r}")
    entity = " ".join(entity.lower().split()) if entity is not None else None
    return EntityJudgement(entity, count if entity else 0, background, "llm")


#: ``chat(messages) -> reply text``
ChatFn = Callable[[list[dict[str, str]]], str]


class LLMEntityExtractor:
    """The paper's extractor: an instruction LLM answers :data:`USER_TEMPLATE`; :func:`parse_llm_json` reads it.

    A reply that does not parse raises :class:`EntityParseError` (the stage drops the clip with reason
    ``llm_parse_error``) after ``retries`` further attempts.
    """

    source = "llm"

    def __init__(self, chat: ChatFn, retries: int = 1) -> None:
        self.chat = chat
        self.retries = retries

    def extract(self, caption: str) -> EntityJudgement:
        error: EntityParseError | None = None
        for _ in range(self.retries + 1):
            try:
                return parse_llm_json(self.chat(build_messages(caption)))
            except EntityParseError as caught:
                error = caught
        assert error is not None
        raise error


class TransformersChat:
    """Greedy chat generation with a transformers causal LM (Qwen2.5-Instruct) loaded from a folder."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 64) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str = "cpu", dtype: str = "auto") -> TransformersChat:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch_dtype = {"auto": "auto", "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype).to(device)
        return cls(model, tokenizer)

    def __call__(self, messages: list[dict[str, str]]) -> str:
        import torch

        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


class EntityStage:
    """Decides one caption: ``assess(caption) -> Decision`` (a parse failure is a drop, not a crash)."""

    stage = "entity"

    def __init__(self, extractor: EntityExtractor) -> None:
        self.extractor = extractor

    @property
    def config(self) -> dict[str, str]:
        return {"extractor": self.extractor.source}

    def assess(self, caption: str) -> Decision:
        if not isinstance(caption, str) or not caption.strip():
            return Decision.drop("no_caption", "the clip has an empty caption", extractor=self.extractor.source)
        try:
            judgement = self.extractor.extract(caption)
        except EntityParseError as error:
            return Decision.drop("llm_parse_error", str(error), extractor=self.extractor.source)
        return decide(judgement)


def build_entity_stage(extractor: str = "llm", weights_dir: str | os.PathLike | None = None, *,
                       llm_path: str | os.PathLike | None = None, device: str = "cpu",
                       dtype: str = "auto") -> EntityStage:
    """Stage 2 with the paper's LLM (``extractor="llm"``, Qwen2.5-Instruct from a folder) or the offline rules.

    Raises:
        videobench.weights.MissingWeightsError: naming the LLM folder and where it goes.
    """
    if extractor == "rule":
        return EntityStage(RuleEntityExtractor())
    if extractor != "llm":
        raise ValueError(f"unknown entity extractor {extractor!r}; expected 'llm' or 'rule'")
    from customvideox.curation.models import QWEN, resolve_model

    return EntityStage(LLMEntityExtractor(TransformersChat.from_path(resolve_model(QWEN, llm_path, weights_dir),
                                                                     device=device, dtype=dtype)))
