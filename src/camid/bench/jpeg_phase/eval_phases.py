"""Accuracy of a trained run on 256-px crops of the held-out photos at several JPEG phases
(same positions as prep.py, +phase), both folds' models averaged (gmean) as predict does."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from camid.data.crops import centre_offset
from camid.data.images import read_image
from camid.infer.ensemble import Ensemble
from camid.infer.predict import predict_test
from camid.infer.tta import reduce_probs
from camid.train.rundir import RunDir


def main() -> None:
    wd = Path(sys.argv[1])
    torch.set_num_threads(1)
    ens = [Ensemble(RunDir(wd / "models" / "camid_tiny" / f"fold{k}").checkpoint_files(1, "top_n"), torch.device("cpu"),
                    "full", "gmean", False) for k in (0, 1)]
    man = pd.read_csv("../shared/data/real_cameras/manifest.csv")
    held = []
    for cam, grp in man.groupby("camera"):
        for f in sorted(grp["file"])[::4][:3]:
            img = read_image(Path("../shared/data/real_cameras") / f)
            h, w = img.shape[:2]
            y0, x0 = centre_offset(h, 1024, 16), centre_offset(w, 1024, 16)
            held.append((cam, img[y0:y0 + 1024, x0:x0 + 1024]))
    out = []
    for phase in [(0, 0), (4, 4), (6, 0), (2, 6)]:
        crops, labels = [], []
        for cam, region in held:
            for i in range(4):
                for j in range(4):
                    y, x = 16 + 240 * i + phase[0], 16 + 240 * j + phase[1]
                    crops.append(("c", 0, np.ascontiguousarray(region[y:y + 256, x:x + 256])))
                    labels.append(cam)
        stacked = torch.from_numpy(np.stack([predict_test(e, crops, 80) for e in ens]))
        probs = reduce_probs(stacked, "gmean", dim=0).numpy()
        pred = np.asarray(ens[0].classes)[probs.argmax(1)]
        acc = float((pred == np.asarray(labels)).mean())
        out.append(f"phase {phase}: acc {acc:.4f} (n {len(labels)})")
    print(wd.name, "|", "; ".join(out))


if __name__ == "__main__":
    main()
