"""The lessons' "predict, then run" exercises: an answer the run computes, folded away until the reader opens it.

An exercise asks the reader to commit to a prediction before seeing the result. An answer printed in
plain view under the cell gives it away at a glance, so `answer` folds the lesson's computed text into
a collapsed `<details>` block. The text is written by the cell from its own numbers (a lesson never
types a result), and `holds` words a prediction's check the way every lesson states one.
`train_test_accuracy` measures the one number the runs do not record: a model's accuracy on the data
it was trained on.
"""
from __future__ import annotations

import dataclasses


def holds(condition) -> str:
    """A prediction's verdict in the lessons' words: '**holds**' or '**does not hold**'."""
    return "**holds**" if bool(condition) else "**does not hold**"


def answer(text_markdown: str, summary: str = "Answer"):
    """`text_markdown` as HTML inside a closed `<details>` block titled `summary`, ready for `display`.

    The markdown is converted here (mistune, which nbconvert already needs), not left to the
    front end: a notebook renders markdown inside raw HTML in some viewers and not in others,
    and the report's HTML page must show the same answer as JupyterLab.
    """
    import mistune
    from IPython.display import HTML

    if not str(text_markdown).strip():
        raise ValueError("answer: text_markdown is empty: an exercise's answer must say what the run showed")
    return HTML(f"<details><summary>{summary}</summary>\n{mistune.html(str(text_markdown))}</details>")


def train_test_accuracy(cfg, state: dict, data, num_train: int = 0) -> tuple[float, float]:
    """(accuracy on the first `num_train` training samples (0: all), accuracy on the test split) of `state`.

    The runs record test accuracy only; a train/test gap needs the training side too. The training
    samples are scored exactly as the test split is (the engine's own `evaluate`, no augmentation,
    the training set's normalization), by handing them to a federation as its test split.
    """
    from ..core.data import head
    from ..simulator.federation import Federation

    train = head(data, num_train, 0)
    as_test = dataclasses.replace(data, x_test=train.x_train, y_test=train.y_train)
    scores = []
    for ds in (as_test, data):
        fed = Federation(cfg, data=ds)
        try:
            scores.append(fed.trainer.evaluate(state)[0])
        finally:
            fed.close()
    return scores[0], scores[1]
