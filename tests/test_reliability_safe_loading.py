"""Issue 8, point 4: nothing camid loads can run code.

Checkpoints and ImageNet weights go through ``torch.load(..., weights_only=True)`` (or
safetensors); a crafted pickle whose ``__reduce__`` would run a command is refused
before any of it executes. Level-2 stackers are saved in native non-pickle formats
(XGBoost JSON, LightGBM text, MLP ``.npz`` of plain arrays + JSON).
"""
from __future__ import annotations

import builtins
import dataclasses
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camid.errors import CamidError, CheckpointError
from camid.models import registry as models
from camid.util.io import load_torch, write_json
from reliability_tiny import camid, make_table, one_error, write_config

SRC = Path(__file__).resolve().parents[1] / "src" / "camid"


class Payload:
    """Unpickling this object calls ``func(*args)``: a marker file proves it ran."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "eval": Payload(builtins.eval, f"__import__('pathlib').Path({str(marker)!r}).touch()"),
    }


def write_malicious(path: Path, payload: Payload, how: str) -> Path:
    """A file that looks like one of ours: a checkpoint dict / a state dict with a payload inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "checkpoint":
        obj = {"model_args": {"backbone": "camid_tiny", "num_classes": 3, "dropout": 0.0},
               "state_dict": {"head.weight": torch.zeros(3, 97)}, "classes": ["a", "b", "c"],
               "input_size": 32, "evil": payload}
        torch.save(obj, path)
    elif how == "state_dict":
        torch.save({"conv.weight": torch.zeros(1), "conv.bias": payload}, path)
    else:  # a bare legacy pickle, no zip container at all
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


@pytest.mark.parametrize("how", ["checkpoint", "state_dict", "raw_pickle"])
@pytest.mark.parametrize("kind", ["os.system", "exec", "eval"])
def test_crafted_checkpoints_are_refused_without_running_code(tmp_path, kind, how):
    from camid.train.rundir import load_checkpoint

    marker = tmp_path / "PWNED"
    path = write_malicious(tmp_path / "epoch001.pt", payloads(marker)[kind], how)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused to load") as err:
        load_torch(path)
    assert "weights_only" not in str(err.value)  # never advise the unsafe retry torch suggests
    assert not marker.exists()


def test_train_load_checkpoint_raises_a_camid_error(tmp_path):
    from camid.train.rundir import load_checkpoint

    marker = tmp_path / "PWNED"
    with pytest.raises(CamidError):
        load_checkpoint(write_malicious(tmp_path / "last.pt", payloads(marker)["os.system"], "checkpoint"))
    assert not marker.exists()


def test_damaged_checkpoints_are_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    assert torch.equal(load_torch(good)["state_dict"]["w"], torch.ones(2))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_torch(cut)
    with pytest.raises(CheckpointError, match="not found"):
        load_torch(tmp_path / "nope.pt")


@pytest.mark.parametrize("file_name", ["evil.pth", "evil.safetensors"])
def test_imagenet_weights_are_refused_without_running_code(tmp_path, file_name):
    marker = tmp_path / "PWNED"
    path = tmp_path / "weights" / file_name
    if file_name.endswith(".pth"):
        write_malicious(path, payloads(marker)["os.system"], "state_dict")
    else:  # safetensors cannot hold code; a pickle renamed to .safetensors is just unreadable
        write_malicious(path, payloads(marker)["os.system"], "raw_pickle")
    spec = dataclasses.replace(models.get_spec("camid_tiny"), weights_files=(file_name,))
    net, _ = spec.build()
    with pytest.raises(CamidError, match=f"cannot read weights file .*{re.escape(file_name)}"):
        models.load_pretrained(net, spec, tmp_path / "weights")
    assert not marker.exists()


def _trained_run_with(root: Path, payload: Payload) -> list:
    """A workdir whose only checkpoint is malicious, listed in checkpoints.json like a real one."""
    data = root / "data"
    for c in ("a", "b", "c"):
        (data / "train" / c).mkdir(parents=True)
    (data / "test").mkdir()
    cfg = write_config(root / "c.yaml", data, models=["r"])
    (root / "models").mkdir()
    (root / "models" / "folds.csv").write_text("fname,path,label,source,fold\n"
                                               f"train/a/x.jpg,{data}/train/a/x.jpg,a,train,0\n")
    run = root / "models" / "r" / "fold0"
    write_malicious(run / "epoch001.pt", payload, "checkpoint")
    write_json(run / "checkpoints.json", {"checkpoints": [{"file": "epoch001.pt"}], "classes": ["a", "b", "c"]})
    return ["--config", cfg, "--workdir", root]


def test_predict_never_runs_code_from_a_malicious_checkpoint(tmp_path):
    marker = tmp_path / "PWNED"
    common = _trained_run_with(tmp_path, payloads(marker)["os.system"])
    Image.new("RGB", (32, 32)).save(tmp_path / "data" / "test" / "img_0000001_unalt.tif")
    try:
        rc = camid("predict", *common)
    except Exception as exc:  # noqa: BLE001 -- today torch's UnpicklingError escapes (patch S1)
        assert "Unsupported global" in str(exc) or "unsupported GLOBAL" in str(exc)
        rc = None
    assert rc != 0 and not marker.exists()


def test_predict_reports_a_malicious_checkpoint_in_one_line(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    common = _trained_run_with(tmp_path, payloads(marker)["exec"])
    Image.new("RGB", (32, 32)).save(tmp_path / "data" / "test" / "img_0000001_unalt.tif")
    assert camid("predict", *common) == 2
    err = one_error(capsys.readouterr().err, "predict")
    assert "epoch001.pt: refused to load" in err
    assert not marker.exists()


# ------------------------------------------------------------------ source-level guards

def test_no_module_uses_an_unsafe_loader():
    """Every torch.load passes weights_only=True; no pickle/joblib/unsafe numpy or YAML loading."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start():text.find(")", m.start()) + 1]
            if "weights_only=True" not in call:
                offenders.append(f"{path.name}: {call}")
        for bad in (r"\bpickle\.loads?\(", r"\bjoblib\.load\(", r"allow_pickle\s*=\s*True",
                    r"weights_only\s*=\s*False", r"\byaml\.load\(", r"\bdill\b", r"\bcloudpickle\b",
                    r"\.to_pickle\(", r"read_pickle\("):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(bad, text)]
    assert not offenders, offenders


# ------------------------------------------------------------------ stackers

STACK_CONFIG = """
blend:
  strategies: [{strategies}]
  stack: {{seeds: 1, folds: 2, rounds: 4, max_depth: 2, mlp_hidden: 8, mlp_epochs: 2, threads: 1}}
"""


def _stackers() -> list[str]:
    out = ["mlp"]
    for name, module in (("xgb", "xgboost"), ("lgb", "lightgbm")):
        try:
            __import__(module)
            out.append(name)
        except ImportError:
            pass
    return out


def test_stackers_are_saved_in_native_non_pickle_formats(tmp_path):
    stackers = _stackers()
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "data", models=["a", "b"])
    cfg.write_text(cfg.read_text().split("blend:")[0] + STACK_CONFIG.format(strategies=", ".join(stackers)))
    from camid.infer.table import write_table

    for i, run in enumerate(["a", "b"]):
        write_table(make_table(n_train=24, seed=i), tmp_path / "oof" / f"{run}.none.parquet",
                    ["cam-a", "cam-b", "cam-c"], meta={})
    assert camid("blend", "--config", cfg, "--workdir", tmp_path) == 0

    level2 = tmp_path / "models" / "level2"
    files = sorted(p for p in level2.rglob("*") if p.is_file())
    assert {p.parent.name for p in files} == set(stackers)
    for path in files:
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{path} looks like a pickle"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".txt":
            path.read_text(encoding="utf-8")
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:  # object arrays would raise here
                assert all(npz[k].dtype.kind in "fiu" for k in npz.files)
        else:
            raise AssertionError(f"unexpected stacker file {path}")
    manifest = json.loads((level2 / "mlp" / "manifest.json").read_text())
    assert manifest["files"] and all((level2 / "mlp" / f).is_file() for f in manifest["files"])
    if "xgb" in stackers:
        import xgboost as xgb

        for f in json.loads((level2 / "xgb" / "manifest.json").read_text())["files"]:
            xgb.Booster(model_file=str(level2 / "xgb" / f))
    if "lgb" in stackers:
        import lightgbm as lgb

        for f in json.loads((level2 / "lgb" / "manifest.json").read_text())["files"]:
            lgb.Booster(model_file=str(level2 / "lgb" / f))
