"""No lesson types a result into its prose: every number in a markdown cell is structure or a quoted source fact.

A markdown cell is the same under every parameter file, so a measured number, a count or a parameter value
written there is true of one run at best. `fl_lib.study.prose.typed_numbers` finds every such number;
`notebooks/prose_numbers.yaml` lists, per lesson, the phrases that quote a source or a constant fixed in
code. The executed report (tests/test_notebooks.py) is checked the same way, and a second parameter set
shows the counts lesson 01 prints follow its parameters.
"""
import jupytext
import pytest

from fl_lib.study import report
from fl_lib.study.prose import lesson_typed_numbers, source_phrases, typed_numbers

NOTEBOOKS = report.lesson_paths()
STEMS = [p.stem for p in NOTEBOOKS]
QUOTED = source_phrases(report.NOTEBOOKS_DIR / "prose_numbers.yaml")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_lesson_prose_states_no_number_the_run_did_not_produce(path):
    found = lesson_typed_numbers(jupytext.read(str(path)).cells, QUOTED.get(path.stem, []))
    assert not found, (f"{path.name} types numbers into its prose (print them from the run, or quote the source "
                       f"in notebooks/prose_numbers.yaml):\n" + "\n".join(map(str, found)))


def test_every_quoted_phrase_is_still_in_its_lesson():
    """A stale or needless entry would let its number back in elsewhere unnoticed."""
    assert set(QUOTED) <= set(STEMS)
    for stem, phrases in QUOTED.items():
        text = "\n\n".join(c.source for c in jupytext.read(str(report.NOTEBOOKS_DIR / f"{stem}.py")).cells
                             if c.cell_type == "markdown")
        flat = " ".join(text.split())
        for phrase in phrases:
            assert " ".join(phrase.split()) in flat, f"{stem}: quoted phrase not found: {phrase!r}"
            others = [p for p in phrases if p != phrase]
            assert len(typed_numbers(text, others)) > len(typed_numbers(text, phrases)), \
                f"{stem}: quoted phrase covers no number the check would refuse: {phrase!r}"


# -- the check can fail: sentences the lessons carried before they computed their claims ----------------------
OLD_SENTENCES = {  # quoted from git history (before 94f1082), each true of one run or parameter file only
    "01_fedsgd_to_fedavg": ("`partition=\"shards\"` is the paper's pathological non-IID split (sort by label, "
                            "200 shards, 2 per\nclient)", ["200", "2"]),
    "01_fedsgd_to_fedavg ": ("for 50 values of $\\theta$ in [-0.2, 1.2], and each mixture's loss is measured", ["50"]),
    "07_upload_leakage": ("(100 steps, seed 0) measured\non the real CIFAR-10 subset: LeNet with DLG 31.0 / 31.1 / 29.1 / "
                   "13.2 dB at FP32 / INT16 / INT8 /\nINT4; the cosine attack on `cifar_cnn` (2,000 steps) about 20 dB",
                   ["100", "31.0", "31.1", "29.1", "13.2", "2,000", "20"]),  # be4ee75
}


@pytest.mark.parametrize("stem", sorted(OLD_SENTENCES), ids=lambda s: s.strip())
def test_old_static_sentences_are_refused(stem):
    sentence, numbers = OLD_SENTENCES[stem]
    found = typed_numbers(sentence, QUOTED.get(stem.strip(), []))
    assert [t.number for t in found] == numbers


def test_structure_and_years_are_not_results():
    text = ("# 3. Section\n1. first item\nAs lessons 04 and 05 show (Table 1, Figure 2, equations (1)-(3), "
            "Algorithm 1; McMahan et al. 2017; arXiv:2001.02610), round 1 starts at 0.")
    assert typed_numbers(text) == []


def test_values_in_tex_and_code_are_checked_but_notation_is_not():
    assert [t.number for t in typed_numbers("with $\\alpha = 0.3$ and `num_rounds = 40`")] == ["0.3", "40"]
    assert typed_numbers("$$f(w) = \\sum_{k=1}^{K} \\frac{n_k}{n} F_k(w), \\quad q = 2^{b-1}-1$$") == []


def test_a_quoted_phrase_covers_its_numbers_across_line_breaks_and_nowhere_else():
    quoted = ["the paper: 100 clients, 200 shards of 300 images"]
    text = "As in the paper: 100 clients,\n200 shards of 300 images. This run has 200 shards."
    assert [t.number for t in typed_numbers(text, quoted)] == ["200"]
    assert "This run has 200 shards" in str(typed_numbers(text, quoted)[0])
