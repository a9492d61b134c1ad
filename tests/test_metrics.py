from pathlib import Path

import pandas as pd
import pytest

from camid import cli
from camid.level2.metrics import (
    SubmissionError,
    confusion_matrix,
    score_predictions,
    score_submission,
    score_table,
    validate_submission,
    weighted_score,
)

CLASSES = ["a", "b", "c"]


def solution_frame(with_manip_column=True):
    # 4 unaltered + 4 manipulated images
    fnames = [f"img_{i}_unalt.tif" for i in range(4)] + [f"img_{i}_manip.tif" for i in range(4, 8)]
    sol = pd.DataFrame({"fname": fnames, "camera": ["a", "b", "c", "a", "b", "c", "a", "b"]})
    if with_manip_column:
        sol["manipulation"] = ["none"] * 4 + ["jpeg70", "jpeg70", "gamma0.8", "resize2.0"]
    return sol


def submission_frame():
    # unalt: 3 of 4 right; manip: 1 of 4 right (only img_6)
    fnames = [f"img_{i}_unalt.tif" for i in range(4)] + [f"img_{i}_manip.tif" for i in range(4, 8)]
    return pd.DataFrame({"fname": fnames,
                         "camera": ["a", "b", "c", "b", "a", "a", "a", "c"]})


def test_weighted_score_hand_case():
    assert weighted_score(0.75, 0.25) == pytest.approx(0.7 * 0.75 + 0.3 * 0.25)
    assert weighted_score(0.5, None) == 0.5 and weighted_score(None, 0.4) == 0.4


@pytest.mark.parametrize("with_manip_column", [True, False])
def test_score_submission_exact(with_manip_column):
    rep = score_submission(submission_frame(), solution_frame(with_manip_column), CLASSES)
    assert rep.acc_unalt == 0.75 and rep.acc_manip == 0.25
    assert rep.score == pytest.approx(0.6)  # 0.7 * 0.75 + 0.3 * 0.25
    assert rep.n_unalt == 4 and rep.n_manip == 4
    # per class recall: a 2/3 (img_0 ok, img_3 wrong, img_6 ok), b 1/3, c 1/2
    assert rep.per_class.loc["a", "accuracy"] == pytest.approx(2 / 3)
    assert rep.per_class.loc["b", "accuracy"] == pytest.approx(1 / 3)
    assert rep.per_class.loc["c", "accuracy"] == pytest.approx(1 / 2)
    if with_manip_column:
        assert rep.per_manip.loc["jpeg70", "accuracy"] == 0.0
        assert rep.per_manip.loc["gamma0.8", "accuracy"] == 1.0
        assert rep.per_manip.loc["none", "n"] == 4
    else:
        assert set(rep.per_manip.index) == {"none", "manip"}
    assert rep.confusion.to_numpy().sum() == 8
    assert rep.confusion.loc["a", "b"] == 1 and rep.confusion.loc["c", "a"] == 1


def test_confusion_rows_true_columns_predicted():
    cm = confusion_matrix(["a", "a", "b"], ["a", "b", "b"], CLASSES)
    assert cm.to_numpy().tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_score_table_uses_aug_for_halves():
    df = pd.DataFrame({"fname": ["x", "x", "y", "y"], "split": "oof", "fold": 0, "manip": [0, 1, 0, 1],
                       "aug": ["none", "jpeg70", "none", "gamma0.8"], "label": ["a", "a", "b", "b"],
                       "a": [0.9, 0.2, 0.6, 0.3], "b": [0.1, 0.8, 0.4, 0.7]})
    rep = score_table(df, ["a", "b"])
    assert (rep.acc_unalt, rep.acc_manip) == (0.5, 0.5)
    assert rep.score == pytest.approx(0.5)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.iloc[:-1], "missing"),
    (lambda s: pd.concat([s, s.iloc[:1]]), "duplicate"),
    (lambda s: s.assign(fname=s["fname"].replace("img_0_unalt.tif", "img_9_unalt.tif")), "unknown file"),
    (lambda s: s.assign(camera=s["camera"].replace("c", "Nokia")), "unknown class"),
    (lambda s: s.rename(columns={"camera": "label"}), "header"),
    (lambda s: s[["camera", "fname"]], "header"),
    (lambda s: s.assign(extra=1), "header"),
])
def test_validator_refusals(mutate, message):
    sol = solution_frame()
    with pytest.raises(SubmissionError, match=message):
        validate_submission(mutate(submission_frame()), sol["fname"].tolist(), CLASSES)


def test_validator_accepts_any_row_order():
    validate_submission(submission_frame().iloc[::-1], solution_frame()["fname"].tolist(), CLASSES)


def test_score_predictions_perfect():
    rep = score_predictions(["a", "b"], ["a", "b"], ["none", "jpeg90"], CLASSES)
    assert rep.score == 1.0


def test_cli_score_prints_and_writes_png(tmp_path: Path, capsys):
    sub_path, sol_path = tmp_path / "subs" / "s1.csv", tmp_path / "solution.csv"
    sub_path.parent.mkdir()
    submission_frame().to_csv(sub_path, index=False)
    solution_frame().to_csv(sol_path, index=False)
    assert cli.main(["score", str(sub_path), "--solution", str(sol_path)]) == 0
    out = capsys.readouterr().out
    assert "score 0.6000" in out and "jpeg70" in out and "per class" in out
    png = tmp_path / "subs" / "s1.confusion.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_score_refuses_bad_submission(tmp_path: Path, capsys):
    sub_path, sol_path = tmp_path / "s.csv", tmp_path / "solution.csv"
    submission_frame().iloc[:-2].to_csv(sub_path, index=False)
    solution_frame().to_csv(sol_path, index=False)
    assert cli.main(["score", str(sub_path), "--solution", str(sol_path)]) == 2
    err = capsys.readouterr().err
    assert "2 file(s) missing" in err and "Traceback" not in err
    assert not (tmp_path / "s.confusion.png").exists()
