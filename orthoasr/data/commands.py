"""A small-vocabulary command grammar for the CPU demo corpus, after the GRID corpus
(Cooke et al. 2006): "Put the red ball under the table now."

Why: the open-vocabulary sentences (sentences.py, thousands of words) need far more speech
than 2 CPU cores can synthesise and learn from in minutes, so a demo on them shows a model
that has not learned yet. Here ~60 words, each said hundreds of times in training, chosen to
sound unlike each other (no two words of a slot rhyme or share their stressed vowel and
consonants); the slots combine into ~10^6 sentences, so dev and test sentences are still
never heard in training, only their words are.

`CommandGenerator(seed).sentence()` has the same interface as `SentenceGenerator`.
"""

from __future__ import annotations

import random

VERBS = ("put", "place", "move", "set", "drop", "bring", "take", "lay")
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
COLORS = ("red", "green", "blue", "white", "black", "yellow", "brown", "pink", "orange",
          "purple")
OBJECTS = ("ball", "box", "cup", "book", "key", "chair", "lamp", "shoe", "pen", "clock",
           "plate", "hat")
PREPOSITIONS = ("on", "under", "near", "behind", "beside", "inside")
PLACES = ("table", "bed", "desk", "door", "window", "shelf", "sofa", "floor")
ENDINGS = ("now", "soon", "again", "please", "quickly", "slowly", "today", "later")


class CommandGenerator:
    """"<Verb> the <color> <object> <preposition> the <place> <ending>." or, one time in
    three, "<Verb> <number> <color> <object>s <preposition> the <place> <ending>."
    Deterministic for a seed."""

    def __init__(self, seed: int = 0, max_words: int | None = None):
        self.rng = random.Random(seed)       # max_words: every command has 8 words or fewer

    def sentence(self) -> str:
        c = self.rng.choice
        verb, color, obj = c(VERBS), c(COLORS), c(OBJECTS)
        if self.rng.random() < 1 / 3:
            count = c(NUMBERS)
            noun = obj if count == "one" else obj + ("es" if obj.endswith("x") else "s")
            thing = f"{count} {color} {noun}"
        else:
            thing = f"the {color} {obj}"
        return f"{verb.capitalize()} {thing} {c(PREPOSITIONS)} the {c(PLACES)} {c(ENDINGS)}."


__all__ = ["CommandGenerator"]
