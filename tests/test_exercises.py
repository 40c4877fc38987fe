"""The exercises' helpers: a computed answer folded into <details>, and a model's train and test accuracy."""
import dataclasses

import pytest

from fl_lib.study.exercises import answer, holds, train_test_accuracy


def test_answer_folds_the_computed_markdown_into_a_closed_details_block():
    html = answer("INT2 deltas lose **3.5x** less: holds\n\n* a point").data
    assert html.startswith("<details><summary>Answer</summary>") and html.endswith("</details>")
    assert "<strong>3.5x</strong>" in html and "<li>a point</li>" in html
    assert " open" not in html.split(">")[0]  # closed until the reader opens it
    assert "<summary>Hint</summary>" in answer("x", summary="Hint").data


@pytest.mark.parametrize("text", ["", "  \n"])
def test_an_empty_answer_is_refused(text):
    with pytest.raises(ValueError, match="empty"):
        answer(text)


def test_holds_words_the_verdict_as_the_lessons_do():
    assert holds(2 > 1) == "**holds**" and holds(False) == "**does not hold**"


def test_train_test_accuracy_scores_the_training_samples_as_the_engine_scores_the_test_split(tiny, tiny_data):
    from fl_lib.simulator.federation import Federation

    cfg = tiny()
    fed = Federation(cfg, data=tiny_data)
    fed.round(1)
    state = fed.global_state
    _, test_acc = train_test_accuracy(cfg, state, tiny_data)
    assert test_acc == fed.evaluate()[0]  # the oracle: the engine's own evaluation
    swapped = dataclasses.replace(tiny_data, x_train=tiny_data.x_test, y_train=tiny_data.y_test)
    train_acc, test_acc2 = train_test_accuracy(cfg, state, swapped)
    assert train_acc == test_acc2 == test_acc  # the same images score the same on either side
    few, _ = train_test_accuracy(cfg, state, swapped, num_train=10)
    assert few * 10 == pytest.approx(round(few * 10))  # a share of exactly 10 images
