"""The heads study's agreement criterion on hand-made rows (no training)."""

from interp.studies.heads import verdicts


def rows(gaps: dict[int, float], predicted: int, process: str = "p") -> list[dict]:
    return [{"process": process, "predicted heads": predicted, "model heads": h, "gap fraction": g}
            for h, g in gaps.items()]


def test_fewer_heads_must_be_worse_by_the_margin_and_enough_heads_within_it():
    r = rows({1: 0.40, 2: 0.10, 4: 0.12}, predicted=2)
    verdicts(r, 0.05)
    assert [(x["enough heads"], x["agrees"]) for x in r] == [("no", "yes"), ("yes", "yes"), ("yes", "yes")]
    r = rows({1: 0.13, 2: 0.10, 4: 0.30}, predicted=2)  # the 1-head model is not measurably worse; 4 heads is
    verdicts(r, 0.05)
    assert [x["agrees"] for x in r] == ["no", "yes", "no"]


def test_processes_are_judged_apart_and_an_untested_prediction_is_none():
    r = rows({1: 0.5, 2: 0.5}, predicted=3, process="a") + rows({1: 0.1, 2: 0.5}, predicted=1, process="b")
    verdicts(r, 0.05)
    assert [x["agrees"] for x in r] == [None, None, "yes", "no"]
