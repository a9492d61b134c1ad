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
