"""`camid kaggle download|submit`: the command lines built for the official kaggle CLI (which
needs the user's credentials and network, so it never runs here), unpacking and validation."""
from __future__ import annotations

import subprocess
import zipfile

import pandas as pd
import pytest

from camid import cli
from camid.cli import kaggle
from camid.errors import DataError, SubmissionError, UsageError


def test_command_lines():
    assert kaggle.download_command(kaggle.Path("data/kaggle")) == [
        "kaggle", "competitions", "download", "-c", "sp-society-camera-model-identification", "-p", "data/kaggle"]
    assert kaggle.submit_command(kaggle.Path("s.csv"), "late try") == [
        "kaggle", "competitions", "submit", "-c", "sp-society-camera-model-identification", "-f", "s.csv",
        "-m", "late try"]


def test_make_targets_call_these_commands():
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "kaggle-data", "kaggle-submit", "DATA=data/kaggle",
                          "SUBMISSION=submissions/x.csv", "MESSAGE=hello"], capture_output=True, text=True, check=True)
    assert "camid kaggle download --data data/kaggle" in out.stdout
    assert 'camid kaggle submit submissions/x.csv --message "hello" --data data/kaggle' in out.stdout


def test_dry_run_prints_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kaggle.subprocess, "call", lambda *a: pytest.fail("ran the kaggle CLI"))
    assert cli.main(["kaggle", "download", "--data", str(tmp_path / "k"), "--dry-run"]) == 0
    assert "would run: kaggle competitions download" in capsys.readouterr().out


def test_without_the_kaggle_cli_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(kaggle.shutil, "which", lambda name: None)
    with pytest.raises(UsageError, match="pip install kaggle"):
        kaggle.check_cli()


def test_without_credentials_the_error_says_where_they_go(monkeypatch, tmp_path):
    monkeypatch.setattr(kaggle.shutil, "which", lambda name: "/usr/bin/kaggle")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    with pytest.raises(UsageError, match="kaggle.json"):
        kaggle.check_cli()


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_unpack_handles_nested_archives_and_checks_the_layout(tmp_path):
    _zip(tmp_path / "inner_train.zip", {"train/HTC-1-M7/a.jpg": b"x", "train/iPhone-6/b.jpg": b"y"})
    _zip(tmp_path / "inner_test.zip", {"test/img_0_unalt.tif": b"z"})
    _zip(tmp_path / "competition.zip", {"train.zip": (tmp_path / "inner_train.zip").read_bytes(),
                                        "test.zip": (tmp_path / "inner_test.zip").read_bytes(),
                                        "sample_submission.csv": b"fname,camera\n"})
    for p in ("inner_train.zip", "inner_test.zip"):
        (tmp_path / p).unlink()
    kaggle.unpack(tmp_path)
    assert (tmp_path / "train" / "HTC-1-M7" / "a.jpg").is_file() and (tmp_path / "test" / "img_0_unalt.tif").is_file()
    assert not list(tmp_path.glob("*.zip"))


def test_an_archive_escaping_the_folder_is_refused(tmp_path):
    _zip(tmp_path / "evil.zip", {"../outside.txt": b"x"})
    with pytest.raises(DataError, match="outside"):
        kaggle.unpack(tmp_path)
    assert not (tmp_path.parent / "outside.txt").exists()


def test_the_simulated_folder_is_not_overwritten(tmp_path):
    (tmp_path / "simulate.json").write_text("{}")
    with pytest.raises(UsageError, match="simulated"):
        kaggle.download(tmp_path, dry_run=True)


def test_an_invalid_submission_is_never_submitted(tmp_path, monkeypatch):
    monkeypatch.setattr(kaggle.subprocess, "call", lambda *a: pytest.fail("submitted"))
    (tmp_path / "train" / "A").mkdir(parents=True)
    (tmp_path / "train" / "B").mkdir()
    pd.DataFrame({"fname": ["x_unalt.tif", "y_manip.tif"], "camera": "A"}).to_csv(tmp_path / "sample_submission.csv",
                                                                              index=False)
    pd.DataFrame({"fname": ["x_unalt.tif"], "camera": ["A"]}).to_csv(tmp_path / "sub.csv", index=False)
    with pytest.raises(SubmissionError):
        kaggle.submit(tmp_path / "sub.csv", "m", tmp_path)
