"""Natural-ish English sentences from templates and the word lists in words.py.

`SentenceGenerator(seed).sentence()` returns one sentence as text for the synthesiser
(capitalised, punctuated); `normalize_text` (manifest.py) turns it into the transcript.
Numbers are written as words, so the transcript is what the voice says.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from . import words as W

_VOWELS = "aeiou"


# ------------------------------------------------------------------------- inflection

def plural(noun: str) -> str:
    if noun in W.IRREGULAR_PLURALS:
        return W.IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in _VOWELS:
        return noun[:-1] + "ies"
    return noun + "s"


def third_person(verb: str) -> str:
    if verb in ("go", "do"):
        return verb + "es"
    if verb == "have":
        return "has"
    if verb.endswith(("s", "x", "z", "ch", "sh")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in _VOWELS:
        return verb[:-1] + "ies"
    return verb + "s"


def _regular_past(verb: str) -> str:
    if verb.endswith("ic"):                       # panic -> panicked
        return verb + "ked"
    if verb in W.DOUBLING_VERBS:
        return verb + verb[-1] + "ed"
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2:-1] not in _VOWELS:
        return verb[:-1] + "ied"
    return verb + "ed"


def past(verb: str) -> str:
    return W.IRREGULAR_VERBS[verb][0] if verb in W.IRREGULAR_VERBS else _regular_past(verb)


def participle(verb: str) -> str:
    return W.IRREGULAR_VERBS[verb][1] if verb in W.IRREGULAR_VERBS else _regular_past(verb)


def gerund(verb: str) -> str:
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("ic"):
        return verb + "king"
    if verb in W.DOUBLING_VERBS:
        return verb + verb[-1] + "ing"
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")) and verb != "be":
        return verb[:-1] + "ing"
    return verb + "ing"


_DOUBLING_ADJECTIVES = frozenset(("big", "thin", "hot", "wet", "sad", "fat", "red"))


def comparative(adj: str) -> str:
    return _graded(adj, "er")


def superlative(adj: str) -> str:
    return _graded(adj, "est")


def _graded(adj: str, suffix: str) -> str:
    if adj in _DOUBLING_ADJECTIVES:
        return adj + adj[-1] + suffix
    if adj.endswith("e"):
        return adj + suffix[1:]
    if adj.endswith("y") and adj[-2:-1] not in _VOWELS:
        return adj[:-1] + "i" + suffix
    return adj + suffix


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    if word in W.AN_EXCEPTIONS:
        return "an"
    if word in W.A_EXCEPTIONS or word.startswith(("uni", "use", "eu")):
        return "a"
    return "an" if word[0] in _VOWELS else "a"


# ------------------------------------------------------------------------- generator

class SentenceGenerator:
    """Draws sentences from ~60 templates whose slots are filled from the word lists.

    Deterministic for a seed. Each slot draws independently, so the same template yields a
    different sentence almost every time; `max_words` keeps sentences short (tiny preset).
    """

    def __init__(self, seed: int = 0, max_words: int | None = None):
        self.rng = random.Random(seed)
        self.max_words = max_words
        self.slots: dict[str, Callable[[], str]] = self._slots()
        self.templates = _TEMPLATES

    def sentence(self) -> str:
        for _ in range(100):
            text = self._fill(self.rng.choice(self.templates))
            if self.max_words is None or len(text.split()) <= self.max_words:
                return text
        return text

    def _fill(self, template: str) -> str:
        out, i = [], 0
        while i < len(template):
            j = template.find("{", i)
            if j < 0:
                out.append(template[i:])
                break
            k = template.index("}", j)
            out.append(template[i:j])
            out.append(self.slots[template[j + 1:k]]())
            i = k + 1
        text = " ".join("".join(out).split())
        text = _fix_articles(text)
        return text[0].upper() + text[1:]

    # slot name -> function drawing one phrase
    def _slots(self) -> dict[str, Callable[[], str]]:
        c = self.rng.choice

        def name() -> str:
            return c(W.FIRST_NAMES).capitalize()

        def full_name() -> str:
            return f"{c(W.FIRST_NAMES).capitalize()} {c(W.SURNAMES).capitalize()}"

        def person() -> str:
            r = self.rng.random()
            if r < 0.3:
                return name()
            if r < 0.4:
                return full_name()
            if r < 0.6:
                return f"the {c(W.PROFESSIONS)}"
            if r < 0.75:
                return f"{c(('my', 'our', 'your', 'his', 'her', 'their'))} {c(W.RELATIVES)}"
            if r < 0.9:
                return f"the {c(W.PERSON_ADJECTIVES)} {c(W.PROFESSIONS)}"
            return f"the {c(W.PEOPLE_GENERIC)}"

        def people() -> str:
            r = self.rng.random()
            if r < 0.4:
                return f"the {plural(c(W.PROFESSIONS))}"
            if r < 0.6:
                return f"{name()} and {name()}"
            if r < 0.8:
                return f"the {c(W.PERSON_ADJECTIVES)} {plural(c(W.PROFESSIONS))}"
            return f"{c(('my', 'our', 'their'))} {plural(c(W.RELATIVES))}"

        def thing(noun_list, adjectives=W.THING_ADJECTIVES) -> Callable[[], str]:
            def draw() -> str:
                r = self.rng.random()
                noun = c(noun_list)
                if r < 0.35:
                    return f"the {noun}"
                if r < 0.6:
                    return f"the {c(adjectives)} {noun}"
                if r < 0.75:
                    return f"a {c(adjectives)} {noun}"
                if r < 0.85:
                    return f"{c(W.NUMBERS)} {plural(noun)}"
                if r < 0.93:
                    return f"the {c(W.COLORS)} {noun}"
                return f"{c(('his', 'her', 'their', 'my', 'our'))} {noun}"
            return draw

        def things(noun_list, adjectives=W.THING_ADJECTIVES) -> Callable[[], str]:
            return lambda: f"{c(W.NUMBERS)} {c(adjectives)} {plural(c(noun_list))}"

        def place() -> str:
            r = self.rng.random()
            if r < 0.3:
                return f"the {c(W.BUILDINGS)}"
            if r < 0.45:
                return f"the {c(W.THING_ADJECTIVES)} {c(W.BUILDINGS)}"
            if r < 0.6:
                return f"the {c(W.NATURE_PLACES)}"
            if r < 0.7:
                return f"the {c(W.ROOMS)}"
            if r < 0.85:
                return c(W.CITIES).capitalize()
            return f"the {c(W.NATURE_PLACES)} near {c(W.CITIES).capitalize()}"

        def when() -> str:
            r = self.rng.random()
            if r < 0.2:
                return f"on {c(W.DAYS).capitalize()}"
            if r < 0.35:
                return f"in {c(W.MONTHS).capitalize()}"
            if r < 0.5:
                return f"last {c(W.SEASONS)}"
            if r < 0.65:
                return f"every {c(W.TIMES_OF_DAY)}"
            if r < 0.8:
                return c(("yesterday", "today", "this morning", "last night", "at dawn",
                          "after lunch", "before dinner", "at noon", "this evening"))
            return f"after the {c(W.EVENTS)}"

        def prep() -> str:
            return c(("in", "near", "behind", "beside", "outside", "inside", "under", "above",
                      "across", "around", "opposite", "beyond", "along", "through"))

        def on_what() -> str:
            return f"the {c(W.FURNITURE)}"

        return {
            "name": name, "full_name": full_name, "person": person, "people": people,
            "Name": name,
            "obj": thing(W.OBJECTS), "objs": things(W.OBJECTS),
            "food": thing(W.FOODS), "foods": things(W.FOODS),
            "mass_food": lambda: c(W.MASS_FOODS),
            "animal": thing(W.ANIMALS, W.PERSON_ADJECTIVES),
            "animals": things(W.ANIMALS, W.PERSON_ADJECTIVES),
            "plant": lambda: c(W.PLANTS), "plant_pl": lambda: plural(c(W.PLANTS)),
            "animal_n": lambda: c(W.ANIMALS), "animal_pl": lambda: plural(c(W.ANIMALS)),
            "vehicle": thing(W.VEHICLES), "vehicle_n": lambda: c(W.VEHICLES),
            "material": lambda: c(W.MATERIALS),
            "topic": lambda: c(W.TOPICS), "abstract": thing(W.ABSTRACT),
            "abstract_n": lambda: c(W.ABSTRACT),
            "event": lambda: c(W.EVENTS), "weather": lambda: c(W.WEATHER),
            "color": lambda: c(W.COLORS), "tadj": lambda: c(W.THING_ADJECTIVES),
            "padj": lambda: c(W.PERSON_ADJECTIVES), "eadj": lambda: c(W.EVAL_ADJECTIVES),
            "cmp": lambda: comparative(c(W.GRADABLE_ADJECTIVES)),
            "sup": lambda: superlative(c(W.GRADABLE_ADJECTIVES)),
            "obj_n": lambda: c(W.OBJECTS), "food_n": lambda: c(W.FOODS),
            "adv": lambda: c(W.ADVERBS), "freq": lambda: c(W.FREQUENCY),
            "number": lambda: c(W.NUMBERS), "city": lambda: c(W.CITIES).capitalize(),
            "country": lambda: c(W.COUNTRIES).capitalize(),
            "place": place, "building": lambda: c(W.BUILDINGS), "room": lambda: c(W.ROOMS),
            "nature": lambda: c(W.NATURE_PLACES), "when": when, "prep": prep,
            "on_what": on_what, "month": lambda: c(W.MONTHS).capitalize(),
            "day": lambda: c(W.DAYS).capitalize(), "season": lambda: c(W.SEASONS),
            "time": lambda: c(W.TIMES_OF_DAY), "profession": lambda: c(W.PROFESSIONS),
            "professions": lambda: plural(c(W.PROFESSIONS)),
            "relative": lambda: c(W.RELATIVES),
            # verbs: <kind>_<form>, form in base / s / past / pp / ing
            **_verb_slots(c, "tv", W.VERBS_OBJECT),
            **_verb_slots(c, "fv", W.VERBS_FOOD),
            **_verb_slots(c, "av", W.VERBS_ANIMAL),
            **_verb_slots(c, "kv", W.VERBS_TOPIC),
            **_verb_slots(c, "iv", W.VERBS_INTRANSITIVE),
        }


def _verb_slots(choice, kind: str, verbs) -> dict[str, Callable[[], str]]:
    return {
        f"{kind}": lambda: choice(verbs),
        f"{kind}_s": lambda: third_person(choice(verbs)),
        f"{kind}_past": lambda: past(choice(verbs)),
        f"{kind}_pp": lambda: participle(choice(verbs)),
        f"{kind}_ing": lambda: gerund(choice(verbs)),
    }


def _fix_articles(text: str) -> str:
    """Turn each 'a' into 'an' (and back) to agree with the word after it."""
    tokens = text.split(" ")
    for i in range(len(tokens) - 1):
        if tokens[i].lower() in ("a", "an"):
            nxt = tokens[i + 1].strip(".,?!").lower()
            if nxt:
                fixed = article(nxt)
                tokens[i] = fixed.capitalize() if tokens[i][0].isupper() else fixed
    return " ".join(tokens)


_TEMPLATES: tuple[str, ...] = (
    "{person} {tv_past} {obj} {prep} {place}.",
    "{person} {tv_past} {obj} {when}.",
    "{person} {freq} {tv_s} {obj} {when}.",
    "{person} will {tv} {obj} {when}.",
    "{person} has {tv_pp} {obj} {adv}.",
    "{people} were {tv_ing} {objs} in the {room}.",
    "Please {tv} {obj} and put it on {on_what}.",
    "Could you {tv} {obj} before {person} arrives?",
    "Did {person} {tv} {obj} {when}?",
    "I think {person} {tv_past} {obj} by mistake.",
    "We found {obj} {prep} {place}.",
    "There were {objs} on {on_what}.",
    "{person} {fv_past} {food} for the {event}.",
    "{person} {freq} {fv_s} {foods} {when}.",
    "We had {mass_food} and {food} for {time} tea.",
    "{person} asked for some {mass_food} and {food}.",
    "The {animal_n} {iv_past} {adv} {prep} {place}.",
    "{person} {av_past} {animal} {prep} {place}.",
    "A {padj} {animal_n} was {iv_ing} {prep} the {nature}.",
    "The {animal_pl} {freq} {iv} {when}.",
    "{people} {av_past} {animals} {prep} the {nature}.",
    "{person} {iv_past} {adv} {when}.",
    "{person} {freq} {iv_s} {prep} {place}.",
    "{people} {iv_past} {adv} after the {event}.",
    "{person} was too {padj} to {iv}.",
    "{person} wants to {iv} {prep} {place} {when}.",
    "{person} {kv_past} the {topic} of {country} {when}.",
    "{people} {freq} {kv} {abstract} at the {building}.",
    "{person} is {kv_ing} {topic} at the university in {city}.",
    "I never {kv_past} {abstract} that {person} {kv_past}.",
    "{person} has {kv_pp} the {abstract_n} about {topic}.",
    "The {abstract_n} was more {eadj} than we expected.",
    "{person} said the {abstract_n} was {eadj} and {eadj}.",
    "Everyone agreed that the {event} was {eadj}.",
    "The {event} in {city} was {eadj} because of the {weather}.",
    "The {weather} began while {people} were {iv_ing}.",
    "It was a {tadj} {time} in {month} when {person} {iv_past}.",
    "{person} traveled from {city} to {city} by {vehicle_n}.",
    "The {color} {vehicle_n} stopped {prep} {place}.",
    "{person} drove {vehicle} to the {building} {when}.",
    "We waited for the {vehicle_n} for {number} minutes.",
    "{person} lives in a {tadj} {building} near the {nature}.",
    "The {building} in {city} is made of {material}.",
    "{person} bought {objs} at the market in {city}.",
    "My {relative} keeps {objs} in the {room}.",
    "There are {number} {professions} working in the {building}.",
    "The {profession} told {person} to {tv} {obj}.",
    "{person} and {person} {tv_past} {obj} together.",
    "Why did {person} {tv} {obj} {prep} {place}?",
    "How many {animal_pl} did {person} see {when}?",
    "Where did {person} {tv} {obj}?",
    "If the {weather} stops, {people} will {iv} {when}.",
    "Although it was {tadj}, {person} {iv_past} {adv}.",
    "{person} {adv} {tv_past} {obj} and {iv_past}.",
    "In {season} {people} {freq} {iv} {prep} the {nature}.",
    "{person} gave {obj} to {person} {when}.",
    "{person} wrote a {eadj} letter about the {topic} of {country}.",
    "The {padj} {profession} from {city} {iv_past} {adv}.",
    "Nobody knew why the {animal_n} was so {padj}.",
    "{person} is {padj} because the {obj_n} is {tadj}.",
    "At the {event} {person} met {full_name} from {city}.",
    "You should {tv} {obj} before the {event}.",
    "{person} lost {obj} somewhere {prep} {place}.",
    "Each {season} the {professions} of {city} {tv} {objs}.",
    "The {obj_n} is {cmp} than the {obj_n}.",
    "This {food_n} tastes {cmp} than the one from {city}.",
    "{person} is the {sup} {profession} in {city}.",
    "That was the {sup} {animal_n} we saw in {country}.",
    "{person} planted {number} {plant_pl} {prep} the {building} {when}.",
    "The {tadj} {plant} near the {building} grew {cmp} {when}.",
    "We picked {plant_pl} and {plant_pl} in the {nature} {when}.",
    "The garden was full of {plant_pl}, {plant_pl} and {plant_pl}.",
)
