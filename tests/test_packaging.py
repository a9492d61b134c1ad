"""pyproject.toml and the requirements files pin the same versions, so `pip install .` and
`make test` build the same environment."""
import tomllib

from conftest import REPO


def _pins(path):
    lines = (line.split("#")[0].strip() for line in (REPO / path).read_text().splitlines())
    return sorted(line for line in lines if line)


def test_runtime_dependencies_are_the_requirements_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == _pins("requirements.txt")
    assert all("==" in pin for pin in project["dependencies"])


def test_the_test_extra_is_requirements_test():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(project["optional-dependencies"]["test"]) == _pins("requirements-test.txt")


def test_the_backend_extras_pin_what_the_tests_install():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["ray"] == [p for p in _pins("requirements-test.txt") if p.startswith("ray==")]
    assert extras["slurm"] == [p for p in _pins("requirements-test.txt") if p.startswith("submitit==")]
