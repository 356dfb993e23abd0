"""Counting and expanding matrices, and prompt templates.

A matrix is a list of value lists; a combination is a tuple of value *indices*, so
values of any JSON type work and exclusion tests compare small integers. An
exclusion rule maps some key positions to the set of value indices it matches; a
combination is excluded when it matches every position of at least one rule.
Counting never enumerates the full product: only the keys that rules mention, or,
when even those are too many, inclusion-exclusion over the rules.
"""

from __future__ import annotations

import itertools
import json
import math
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CountTooHardError",
    "Rule",
    "Template",
    "TemplateError",
    "count_combos",
    "iter_combos",
    "render_value",
]

Rule = tuple[tuple[int, frozenset[int]], ...]
_ENUMERATE_LIMIT = 200_000
_INCLUSION_EXCLUSION_BUDGET = 1_000_000


class TemplateError(ValueError):
    """A prompt template is malformed (unbalanced braces, format specs, …)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class CountTooHardError(ValueError):
    """Too many overlapping exclusion rules to count the jobs exactly."""


def render_value(value: Any) -> str:
    """How a variable's value appears inside a prompt: strings as they are, others as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Template:
    """A ``{name}`` template compiled to literal parts and variable names."""

    text: str
    parts: tuple[str, ...]  # literal, name, literal, name, …, literal (odd length)

    @property
    def names(self) -> tuple[str, ...]:
        """The placeholders, in order (with repeats)."""
        return self.parts[1::2]

    @property
    def is_static(self) -> bool:
        """True when the template has no placeholder (``{{``/``}}`` already unescaped)."""
        return len(self.parts) == 1

    def render(self, variables: Mapping[str, Any]) -> str:
        """Fill in the placeholders from ``variables`` (every name must be present)."""
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            value = variables[parts[i]]
            out.append(value if isinstance(value, str) else render_value(value))
            out.append(parts[i + 1])
        return "".join(out)

    def length_bounds(self, bounds: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
        """Smallest and largest rendered length, given each variable's length bounds."""
        low = high = sum(len(p) for p in self.parts[0::2])
        for name in self.names:
            lo, hi = bounds[name]
            low += lo
            high += hi
        return low, high

    @classmethod
    def compile(cls, text: str) -> Template:
        """Parse ``text``; raise :class:`TemplateError` when it is malformed."""
        parts: list[str] = []
        literal = ""
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise TemplateError(
                f"malformed template: {exc}",
                hint="write {{ and }} for literal braces",
            ) from None
        for lit, name, spec, conversion in parsed:
            literal += lit
            if name is None:
                continue
            if name == "" or name.isdigit():
                raise TemplateError(
                    "empty placeholder {}" if name == "" else f"numbered placeholder {{{name}}}",
                    hint="name a matrix key or prompts-file column, e.g. {subject}",
                )
            if spec or conversion or not name.isidentifier():
                shown = (
                    name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
                )
                raise TemplateError(
                    f"placeholder {{{shown}}} is not a plain name",
                    hint="placeholders are {name} only; write {{ and }} for literal braces",
                )
            parts.append(literal)
            parts.append(name)
            literal = ""
        parts.append(literal)
        return cls(text=text, parts=tuple(parts))


def _matches(combo: Sequence[int], rule: Rule) -> bool:
    return all(combo[pos] in allowed for pos, allowed in rule)


def iter_combos(sizes: Sequence[int], rules: Sequence[Rule]) -> Iterator[tuple[int, ...]]:
    """Every combination of value indices in product order, minus the excluded ones."""
    if not rules:
        yield from itertools.product(*(range(n) for n in sizes))
        return
    for combo in itertools.product(*(range(n) for n in sizes)):
        for rule in rules:
            for pos, allowed in rule:
                if combo[pos] not in allowed:
                    break
            else:
                break  # every position matched: excluded
        else:
            yield combo


def count_combos(
    sizes: Sequence[int], rules: Sequence[Rule], *, enumerate_limit: int = _ENUMERATE_LIMIT
) -> int:
    """How many combinations :func:`iter_combos` yields, without enumerating the product."""
    total = math.prod(sizes)
    rules = [r for r in rules if r]
    if not rules or total == 0:
        return total
    mentioned = sorted({pos for rule in rules for pos, _ in rule})
    sub_total = math.prod(sizes[p] for p in mentioned)
    others = total // sub_total if sub_total else 0
    if sub_total <= enumerate_limit:
        local = {p: i for i, p in enumerate(mentioned)}
        local_rules = [tuple((local[p], a) for p, a in rule) for rule in rules]
        excluded = 0
        for combo in itertools.product(*(range(sizes[p]) for p in mentioned)):
            if any(_matches(combo, rule) for rule in local_rules):
                excluded += 1
        return (sub_total - excluded) * others
    return total - _count_union(sizes, rules)


def _count_union(sizes: Sequence[int], rules: Sequence[Rule]) -> int:
    """Combinations matching at least one rule, by inclusion-exclusion with pruning."""
    total = math.prod(sizes)
    budget = [_INCLUSION_EXCLUSION_BUDGET]

    def size_of(constraint: dict[int, frozenset[int]]) -> int:
        result = total
        for pos, allowed in constraint.items():
            result = result // sizes[pos] * len(allowed)
        return result

    def walk(start: int, constraint: dict[int, frozenset[int]], depth: int) -> int:
        acc = 0
        for i in range(start, len(rules)):
            budget[0] -= 1
            if budget[0] < 0:
                raise CountTooHardError("too many overlapping exclude rules to count")
            merged = dict(constraint)
            empty = False
            for pos, allowed in rules[i]:
                both = merged[pos] & allowed if pos in merged else allowed
                if not both:
                    empty = True
                    break
                merged[pos] = both
            if empty:
                continue
            sign = 1 if depth % 2 == 0 else -1
            acc += sign * size_of(merged)
            acc += walk(i + 1, merged, depth + 1)
        return acc

    return walk(0, {}, 0)
