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
