import subprocess
import sys

import pytest

from camid import cli


def _every_command(commands, prefix=()):
    """The path of every command and group, nested ones included: ("prnu",), ("prnu", "match"), ..."""
    for name, entry in commands.items():
        yield (*prefix, name)
        if isinstance(entry, cli.Group):
            yield from _every_command(entry.commands, (*prefix, name))


@pytest.mark.parametrize("path", sorted(_every_command(cli.COMMANDS)), ids=" ".join)
def test_every_subcommand_has_help(path, capsys):
    entry = cli.Group("camid", cli.COMMANDS)
    for name in path:
        assert isinstance(entry, cli.Group)
        entry = entry.commands[name]
    if isinstance(entry, cli.Group):  # the dispatcher lists a group's commands itself
        assert cli.main([*path, "--help"]) == 0
        out = capsys.readouterr().out
        assert all(name in out for name in entry.commands)
    else:
        with pytest.raises(SystemExit) as exc:
            cli.main([*path, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
    assert f"camid {' '.join(path)}" in out


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
