import subprocess
import sys

import pytest

from camid import cli


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert f"camid {name}" in capsys.readouterr().out


def test_top_level_help_lists_every_subcommand_and_unknown_is_refused(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)
    assert cli.main(["trian"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert cli.main(["folds", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("camid folds: error: config file not found") and "Traceback" not in err


def test_score_runs_without_importing_torch(tmp_path):
    """The dispatcher imports a command's module only when it runs: scoring needs no torch."""
    (tmp_path / "sol.csv").write_text("fname,camera\nimg_1_unalt.tif,a\nimg_2_manip.tif,b\n")
    (tmp_path / "sub.csv").write_text("fname,camera\nimg_1_unalt.tif,a\nimg_2_manip.tif,a\n")
    code = ("import sys; from camid.cli import main; "
            f"rc = main(['score', {str(tmp_path / 'sub.csv')!r}, '--solution', {str(tmp_path / 'sol.csv')!r}]); "
            "sys.exit(10 + rc if 'torch' in sys.modules else rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "score 0.7000" in out.stdout  # 0.7 x 1 (unaltered right) + 0.3 x 0 (manipulated wrong)


def test_a_group_holds_nested_subcommands(monkeypatch, capsys):
    group = cli.Group("fingerprint tools", {"score": cli.COMMANDS["score"]})
    monkeypatch.setitem(cli.COMMANDS, "tools", group)
    assert cli.main(["tools"]) == 0
    assert "score" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["tools", "score", "--help"])
    assert exc.value.code == 0 and "camid tools score" in capsys.readouterr().out
    assert cli.main(["tools", "scroe"]) == 2
    assert "camid tools: unknown subcommand 'scroe'" in capsys.readouterr().err
    assert cli.main(["tools", "score", "missing.csv", "--solution", "missing.csv"]) == 2
    assert capsys.readouterr().err.startswith("camid tools score: error: submission not found")
