"""Caption templates for the synthetic data set: paraphrases that name every attribute.

A caption uses only words its attribute tuple determines, so two items with the same tuple
are true matches whatever template each drew. `synth` picks the template index from the
item's own random stream, so the order of `TEMPLATES` is part of the output: append only.
"""

from __future__ import annotations

TEMPLATES = (
    "{a_size} {colour} {shape} in the {pos}",
    "{pos}: {a_colour} {shape}, {size}",
    "there is {a_size} {shape} coloured {colour} in the {pos}",
    "{a_colour} {shape} ({size}) placed in the {pos}",
    "in the {pos} of the picture, {a_size} {colour} {shape}",
    "{size} {shape}, {colour}, {pos}",
    "the {pos} holds {a_size} {colour} {shape}",
    "a picture of {a_size} {colour} {shape} in the {pos}",
)


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def caption(attributes: dict[str, str], template: int) -> str:
    """Caption from template index; uses only words the tuple determines."""
    pos = attributes["position"].replace("-", " ")
    return TEMPLATES[template % len(TEMPLATES)].format(
        shape=attributes["shape"],
        colour=attributes["colour"],
        size=attributes["size"],
        pos=pos,
        a_size=_a(attributes["size"]),
        a_colour=_a(attributes["colour"]),
    )


# Captions that name only some attributes (real captions are under-specified). Same rule:
# only words the named attributes determine; an unnamed shape is "shape" or "object".
PARTIAL_TEMPLATES = (
    "{np}{where}",
    "a picture of {np}{where}",
    "there is {np}{where}",
    "an image with {np}{where}",
)
_NOUNS = ("shape", "object")


def partial_caption(attributes: dict[str, str], named: set[str], template: int, noun: int) -> str:
    """Caption naming only the attributes in `named` (a non-empty subset of the tuple's keys).

    Relevance is exact: an image matches this caption iff it has every named attribute.
    """
    return PARTIAL_TEMPLATES[template % len(PARTIAL_TEMPLATES)].format(
        np=noun_phrase(attributes, named, noun), where=""
    )


def noun_phrase(attributes: dict[str, str], named: set[str], noun: int) -> str:
    """'a small red circle in the top left', naming only the attributes in `named`."""
    if not named or not named <= set(attributes):
        raise ValueError(f"named must be a non-empty subset of {sorted(attributes)}, got {named}")
    words = [attributes[k] for k in ("size", "colour") if k in named]
    words.append(attributes["shape"] if "shape" in named else _NOUNS[noun % len(_NOUNS)])
    where = f" in the {attributes['position'].replace('-', ' ')}" if "position" in named else ""
    return _a(" ".join(words)) + where


def scene_caption(
    objects: list[dict[str, str]], named: list[set[str]], template: int, nouns: list[int]
) -> str:
    """Caption of a multi-object scene: one noun phrase per object with a non-empty `named`
    set (objects with an empty one are not mentioned), 'X, Y and Z'. An image matches it iff
    every phrase describes one of its objects (one object may meet two phrases)."""
    phrases = [noun_phrase(o, n, k) for o, n, k in zip(objects, named, nouns, strict=True) if n]
    if not phrases:
        raise ValueError("a scene caption must mention at least one object")
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return PARTIAL_TEMPLATES[template % len(PARTIAL_TEMPLATES)].format(np=listed, where="")
