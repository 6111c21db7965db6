"""The text grammar of the embedded corpus: a small realistic vocabulary and train / validation / test splits.

Sentences come from a handful of templates in the style of the GRID corpus ("place blue at f two now") plus
everyday commands ("anna will bring the red phone soon", "dial one two three four"), 3 to 7 words each. Every
sentence in the corpus is distinct, so a validation or test sentence never occurs in training, while all splits
share the vocabulary. Everything is deterministic given the seed.
"""

from __future__ import annotations

import numpy as np


DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = ("blue", "green", "red", "white")
GRID_COMMANDS = ("bin", "lay", "place", "set")
PREPOSITIONS = ("at", "by", "in", "with")
# Letters are spoken by name; "a" is left out because eSpeak reads a lone "a" as the article.
LETTERS = ("b", "f", "j", "l", "o", "q", "r", "s")
ADVERBS = ("again", "now", "please", "soon")
NAMES = ("anna", "john", "lucy", "maria", "mike", "peter", "sarah", "tom")
OBJECTS = ("ball", "book", "box", "cup", "key", "phone")
DIRECTIONS = ("down", "left", "right", "up")
VERBS = ("bring", "find", "move", "take")
MOTIONS = ("go", "look", "step", "turn")

# Each template is a sequence of slots: a tuple of words to draw from, or a fixed word. The weights give each
# template's share of every split; a template must hold at least twice as many sentences as it is asked for.
TEMPLATES: tuple[tuple[str | tuple[str, ...], ...], ...] = (
    (GRID_COMMANDS, COLOURS, PREPOSITIONS, LETTERS, DIGITS, ADVERBS),  # place blue at f two now
    ("call", NAMES, "at", DIGITS, DIGITS),  # call anna at four five
    (NAMES, "will", VERBS, "the", COLOURS, OBJECTS, ADVERBS),  # anna will bring the red phone soon
    ("dial", DIGITS, DIGITS, DIGITS, DIGITS),  # dial one two three four
    (NAMES, ("has", "needs", "wants"), "the", COLOURS, OBJECTS),  # sarah wants the green cup
    (("give", "show"), NAMES, "the", COLOURS, OBJECTS),  # give tom the white key
    (MOTIONS, DIRECTIONS, DIGITS, ADVERBS),  # turn left three now
    (MOTIONS, DIRECTIONS, DIGITS),  # go up two
    (DIGITS, DIGITS, DIGITS),  # seven two nine
)
TEMPLATE_WEIGHTS: tuple[float, ...] = (0.40, 0.10, 0.12, 0.10, 0.07, 0.05, 0.08, 0.02, 0.06)


def _template_vocabulary() -> tuple[str, ...]:
    words: set[str] = set()
    for template in TEMPLATES:
        for slot in template:
            words.update((slot,) if isinstance(slot, str) else slot)
    return tuple(sorted(words))


VOCABULARY: tuple[str, ...] = _template_vocabulary()


def _capacity(template: tuple[str | tuple[str, ...], ...]) -> int:
    return int(np.prod([1 if isinstance(slot, str) else len(slot) for slot in template]))


def _fill(template: tuple[str | tuple[str, ...], ...], rng: np.random.Generator) -> str:
    return " ".join(slot if isinstance(slot, str) else slot[rng.integers(len(slot))] for slot in template)


def sample_sentence(rng: np.random.Generator) -> str:
    """Draw one sentence: a template by :data:`TEMPLATE_WEIGHTS`, then every slot uniformly."""
    return _fill(TEMPLATES[rng.choice(len(TEMPLATES), p=TEMPLATE_WEIGHTS)], rng)


def _quotas(size: int) -> list[int]:
    """Split ``size`` sentences over the templates by weight (largest remainder), identically for every split."""
    exact = np.asarray(TEMPLATE_WEIGHTS) * size
    quotas = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - quotas), kind="stable")[: size - quotas.sum()]:
        quotas[index] += 1
    return quotas.tolist()


def make_splits(num_train: int, num_validation: int, num_test: int, seed: int) -> dict[str, list[str]]:
    """Draw distinct sentences for the three splits, shuffled.

    Sentences are unique across the whole corpus, so no validation or test sentence appears in training; all
    splits draw from the same vocabulary (with the default sizes every word occurs in training) with the same
    template proportions. Test and validation are drawn first, so that they do not change with the size of the
    training set.
    """
    sizes = {"test": num_test, "validation": num_validation, "train": num_train}
    if any(size < 0 for size in sizes.values()):
        raise ValueError(f"make_splits: split sizes must be non-negative, got {sizes}")
    per_split = {split: _quotas(size) for split, size in sizes.items()}
    for index, template in enumerate(TEMPLATES):
        wanted = sum(quotas[index] for quotas in per_split.values())
        if 2 * wanted > _capacity(template):
            raise ValueError(
                f"make_splits: {wanted} sentences of template {index} requested but it holds only "
                f"{_capacity(template)}; ask for fewer sentences (at most half of a template is drawn)"
            )
    seen: set[str] = set()
    splits: dict[str, list[str]] = {}
    for offset, split in enumerate(sizes):
        rng = np.random.default_rng([seed, offset])
        sentences: list[str] = []
        for template, quota in zip(TEMPLATES, per_split[split]):
            drawn = 0
            while drawn < quota:
                sentence = _fill(template, rng)
                if sentence not in seen:
                    seen.add(sentence)
                    sentences.append(sentence)
                    drawn += 1
        splits[split] = [sentences[i] for i in rng.permutation(len(sentences))]
    return {split: splits[split] for split in ("train", "validation", "test")}
