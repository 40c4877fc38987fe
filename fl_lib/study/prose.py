"""Numbers typed into a lesson's prose: the ones a rerun could contradict.

A lesson's markdown is the same whatever parameters papermill injects, so any measured result,
count or parameter value written there is true of one run at best. Prose may still quote the
sources (a paper's table, a dataset's size, a year of publication) and point at structure
(lesson 05, Table 1, equation (2), section 3). Everything else is printed by a code cell.

`typed_numbers` lists the numbers of a markdown text that are neither structure nor a quoted
source phrase; `notebooks/source_numbers.yaml` holds each lesson's quoted phrases.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

NUMBER = re.compile(r"(?<![A-Za-z0-9_.,\-\\^{])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![A-Za-z0-9_])")
# Numbers that point at structure or at a publication, never at a result.
STRUCTURE = [
    r"^\s*#+ .*$",                                       # a heading (its section number)
    r"^\s*\d+\.\s",                                      # a numbered list item
    r"\b[Ll]essons? \d\d(?:(?:,| and| or|-) ?\d\d)*",    # lesson 05, lessons 04 and 05
    r"\b(?:Tables?|Figures?|Fig\.|Algorithms?|[Ss]ections?|[Ss]teps?|[Ee]quations?)"
    r" \(?\d+\)?(?:(?:,| and| or|-|–) ?\(?\d+\)?)*",    # Table 1, Figure 1, equations (1)-(3)
    r"\(\d\)(?:-\(\d\))?",                               # an equation number: (2), (1)-(3)
    r"\b(?:19[5-9]\d|20[0-2]\d)\b(?![,.]\d)",            # a year of publication
    r"arXiv:\d{4}\.\d{4,5}",
    r"(?<![\d.,])\b[01]\b(?![.,]\d)",                   # 0 and 1: a first round, an identity, a bound
]
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`\n]*`", re.S)  # TeX and code spans
# Inside TeX and code a digit is mostly notation (2^{b-1}, x_1); a value follows a relation sign and ends the term.
STATED = re.compile(r"(?:=|\\approx|\\le|\\ge|<|>)\s*\{?(-?(?:\d{1,3}(?:\{?,\}?\d{3})+|\d+)(?:\.\d+)?)"
                    r"(?=\}?\s*(?:$|[$`,;.)\]]|\\[,;]|\\q?quad|\\text))")  # a value ends there; 2^{b-1}, 8D go on


@dataclass(frozen=True)
class Typed:
    """A number in prose that is neither structure nor a quoted source phrase."""
    number: str
    context: str

    def __str__(self):
        return f"{self.number!r} in: ...{self.context}..."


def _flatten(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _covered(text: str, patterns) -> list[tuple[int, int]]:
    spans = []
    for pattern in patterns:
        for m in re.finditer(pattern, text, flags=re.M):
            spans.append(m.span())
    return spans


def _inside(span, spans) -> bool:
    return any(a <= span[0] and span[1] <= b for a, b in spans)


def _candidates(text: str):
    """(span, number) of every number prose states: all of plain text, values after a relation sign in TeX and code."""
    notation = [m.span() for m in MATH.finditer(text)]
    for m in NUMBER.finditer(text):
        if not _inside(m.span(), notation):
            yield m.span(), m.group()
    for a, b in notation:
        for m in STATED.finditer(text, a, b):
            if not _in_script(text, a, m.start()):
                yield m.span(1), m.group(1)


def _in_script(text: str, start: int, at: int) -> bool:
    """Whether position `at` sits inside a TeX sub- or superscript group, as in \\sum_{k=1}."""
    depth = 0
    for i in range(at - 1, start - 1, -1):
        if text[i] == "}":
            depth += 1
        elif text[i] == "{":
            if depth == 0:
                return i > 0 and text[i - 1] in "_^"
            depth -= 1
    return False


def typed_numbers(markdown: str, quoted=()) -> list[Typed]:
    """The numbers of `markdown` that no structure pattern and no quoted source phrase covers."""
    structure = _covered(markdown, STRUCTURE)
    flat = _flatten(markdown)
    quotes = [m.span() for phrase in quoted for m in re.finditer(re.escape(_flatten(phrase)), flat)]
    offsets = _flat_offsets(markdown)  # quoted phrases match across line breaks
    found = []
    for (a, b), number in _candidates(markdown):
        if _inside((a, b), structure) or _inside((offsets[a], offsets[b]), quotes):
            continue
        context = _flatten(markdown[max(0, a - 50):b + 50]).strip()
        found.append(Typed(number, context))
    return found


def _flat_offsets(text: str) -> list[int]:
    """For every position of `text`, its position in `_flatten(text)` (one more entry for the end)."""
    offsets, j, in_space = [], 0, False
    for ch in text:
        offsets.append(j)
        if ch.isspace():
            if not in_space:
                j += 1
            in_space = True
        else:
            j += 1
            in_space = False
    offsets.append(j)
    return offsets


def source_phrases(path: Path) -> dict[str, list[str]]:
    """Each lesson's quoted source phrases from `source_numbers.yaml` (lesson stem -> phrases)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    return {stem: [str(p) for p in (phrases or [])] for stem, phrases in data.items()}


def lesson_typed_numbers(cells, quoted=()) -> list[Typed]:
    """`typed_numbers` over every markdown cell of a notebook (nbformat cells)."""
    found = []
    for cell in cells:
        if cell.cell_type == "markdown":
            found += typed_numbers(cell.source, quoted)
    return found
