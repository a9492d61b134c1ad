"""Issue #22's defects that the demo cannot show: which checkpoints inference reads, the
settings that do (not) change a finished run, validation at load and the packaging of piexif."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from camid import cli
from camid.cli.predict import predict_job
from camid.config import REDUCTION_POWERS, load_config
from camid.level2.average import power_mean
from camid.train.rundir import DONE, INDEX, RunDir
from camid.train.trainer import is_done, train_digest
from camid.workspace import Workspace
from conftest import REPO

KAGGLE = REPO / "configs" / "kaggle.yaml"


def _kaggle_run_folder(ws: Workspace, run: str, fold: int) -> RunDir:
    """A finished fold as kaggle.yaml leaves it: keep_top 3 epochs and 3 cycle-end snapshots,
    the epochs ranked above the snapshots by validation score."""
    rd = RunDir(ws.run_dir(run, fold))
    rd.path.mkdir(parents=True)
    entries: list[dict[str, Any]] = [
        {"file": f"epoch{e:03d}.pt", "epoch": e, "score": 0.99 - e / 1000, "loss": 0.1, "kind": "epoch"}
        for e in (12, 13, 14)]
    entries += [{"file": f"snapshot{c:02d}.pt", "epoch": 20 + 5 * c, "score": 0.9, "loss": 0.2, "kind": "snapshot"}
                for c in range(3)]
    for e in entries:
        (rd.path / e["file"]).write_bytes(b"x")
    (rd.path / INDEX).write_text(json.dumps({"checkpoints": entries, "classes": ["a", "b"]}))
    (rd.path / DONE).write_text(json.dumps({"train_digest": "x"}))
    return rd


def test_a_remote_predict_job_receives_the_checkpoints_prediction_loads(tmp_path):
    """kaggle.yaml predicts with the snapshots; the job's inputs (storage: copy ships exactly these)
    held the top_n epochs instead, and the node failed with CheckpointError."""
    cfg = load_config(KAGGLE, {"cluster.storage": "copy"})
    assert (cfg.predict.checkpoints, cfg.train.keep_top, cfg.train.cycles) == ("snapshots", 3, 3)
    ws = Workspace(tmp_path, tmp_path / "data")
    run = cfg.models[0].run_name
    for k in range(2):
        _kaggle_run_folder(ws, run, k)
    job = predict_job(cfg, ws, run, force=False)
    shipped = sorted(Path(p).name for p in job.inputs if p.endswith(".pt"))
    assert shipped == sorted(["snapshot00.pt", "snapshot01.pt", "snapshot02.pt"] * 2)
    loaded = [f for k in range(2) for f in RunDir(ws.run_dir(run, k)).inference_checkpoints(cfg.predict)]
    assert {f.relative_to(tmp_path).as_posix() for f in loaded} <= set(job.inputs)


@pytest.mark.parametrize(("key", "value", "retrain"), [
    ("train.num_workers", 2, False), ("train.preload", True, False), ("train.decode_cache", "elsewhere", False),
    ("train.max_skip_fraction", 0.2, False), ("train.allow_random_init", True, False), ("train.lr", 3e-4, True)])
def test_only_settings_that_change_the_model_mark_a_finished_run_not_done(tmp_path, key, value, retrain):
    """The worker count was hashed: running train-all on a machine with fewer cores retrained everything."""
    cfg = load_config(KAGGLE)
    ws = Workspace(tmp_path, tmp_path / "data")
    run = cfg.models[0].run_name
    rd = RunDir(ws.run_dir(run, 0))
    rd.path.mkdir(parents=True)
    rd.finish([], ["a", "b"], train_digest(cfg, cfg.models[0]), 1, None)
    assert is_done(ws, cfg, run, 0)
    assert is_done(ws, load_config(KAGGLE, {key: value}), run, 0) is not retrain


def test_the_input_size_message_names_the_per_model_size_it_checks(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"models": [{"backbone": "camid_tiny", "input_size": 640}],
                                    "train": {"input_size": 480}, "predict": {"crop": 512}}))
    with pytest.raises(Exception, match=r"camid_tiny \(640 px\)"):
        load_config(path)


def _top_level_imports(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:  # module level only: lazy imports inside functions are optional extras
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_level_import_is_a_runtime_dependency():
    """piexif was imported at the top of data/external_pool.py but only pinned in the test extra:
    `pip install .` then `camid simulate` failed."""
    import importlib.metadata as md
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # the backend modules import their engine at the top, and are imported only when chosen
    pins = project["dependencies"] + project["optional-dependencies"]["ray"] + project["optional-dependencies"]["slurm"]
    deps = {p.split("==")[0].lower().replace("_", "-") for p in pins}
    dists = md.packages_distributions()
    third_party = {name for path in (REPO / "src" / "camid").rglob("*.py") for name in _top_level_imports(path)
                   if name not in sys.stdlib_module_names and name not in ("camid", "__future__")}
    missing = {name: dists.get(name) for name in third_party
               if not {d.lower().replace("_", "-") for d in dists.get(name, [name])} & deps}
    assert not missing


def test_simulate_runs_without_the_pool_s_exif_writer(tmp_path):
    """The simulator without --external never writes EXIF: it must not need piexif at all."""
    code = ("import sys; sys.modules['piexif'] = None; from camid import cli; "
            f"sys.exit(cli.main(['simulate', {str(tmp_path / 'sim')!r}, '--n-classes', '2', '--train-per-class', '2',"
            " '--test-per-class', '1', '--width', '96', '--height', '64', '--test-crop', '32', '--workers', '1']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "sim" / "test").iterdir())) == 4


def test_predict_refuses_oof_crops_of_another_size_than_the_test_crops(kaggle_layout, tmp_path):
    """predict.crop 48 against 64-px test crops: OOF rows were made at 48 and stood in for 64-px test rows."""
    from camid.errors import DataError
    from camid.infer.predict import predict_run
    from tiny_config import tiny_config

    cfg_path = tiny_config(tmp_path / "c.yaml", kaggle_layout, predict={"crop": 48, "tta": "none"})
    cfg = load_config(cfg_path)
    ws = Workspace(tmp_path / "wd", kaggle_layout)
    assert cli.main(["folds", "--config", str(cfg_path), "--workdir", str(ws.root)]) == 0
    for k in range(2):
        rd = _kaggle_run_folder(ws, cfg.models[0].run_name, k)
        (rd.path / DONE).write_text(json.dumps({"train_digest": "x", "folds_sha256": None}))
    with pytest.raises(DataError, match=r"4 of 64x64 px but predict.crop is 48"):
        predict_run(cfg, ws, cfg.models[0], torch.device("cpu"))


@pytest.mark.parametrize(("section", "bad", "match"), [
    ("blend", {"strategies": ["gmean", "gmaen+hungarian"]}, "blend.strategies"),
    ("blend", {"strategies": ["gmean+hungarian+prnu"]}, "blend.strategies"),
    ("blend", {"models": ["a", "b"], "weights": [1.0]}, "blend.weights has 1"),
    ("predict", {"oof_augs": ["jpeg70", "jpeg42"]}, "predict.oof_augs"),
    ("pseudo", {"strategy": "xgbb"}, "pseudo.strategy")])
def test_a_later_stage_s_setting_stops_the_first_command(kaggle_layout, tmp_path, capsys, section, bad, match):
    """A bad strategy, manipulation name or weights list was found only at blend/predict, after training."""
    from tiny_config import tiny_config

    cfg = tiny_config(tmp_path / "c.yaml", kaggle_layout, **{section: bad})
    assert cli.main(["folds", "--config", str(cfg), "--workdir", str(tmp_path)]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "models" / "folds.csv").exists()


def test_every_reduction_config_accepts_is_one_predict_can_apply(monkeypatch):
    """tta.reduce_probs knew the powers 0, 1, 2 by hand; level 2's power_mean takes any."""
    import camid.infer.tta as tta

    monkeypatch.setitem(REDUCTION_POWERS, "pmean3", 3.0)
    monkeypatch.setitem(REDUCTION_POWERS, "hmean", -1.0)
    probs = torch.softmax(torch.randn(4, 5, 7, dtype=torch.float64), dim=-1)
    for name, p in REDUCTION_POWERS.items():
        got = tta.reduce_probs(probs, name, dim=0).numpy()
        want = power_mean(list(probs.numpy()), p, floor=1e-7)
        assert got == pytest.approx(want, abs=1e-9), name
