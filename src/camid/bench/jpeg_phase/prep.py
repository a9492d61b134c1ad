"""Real photos (../shared/data/real_cameras), one device per model: training 'photos' are lossless
PNG copies of each photo's centre 1024 px (origin on the 16-px MCU grid, so the camera's JPEG grid
keeps phase 0), test crops are 256-px crops of held-out photos at JPEG phase PHASE."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from camid.data.crops import centre_offset
from camid.data.images import read_image
from camid.data.layout import TEST_DIR, TRAIN_DIR


def main() -> None:
    phase = (int(sys.argv[2]), int(sys.argv[3]))
    out = Path(sys.argv[1])
    man = pd.read_csv("../shared/data/real_cameras/manifest.csv")
    truth = []
    for cam, grp in man.groupby("camera"):
        files = sorted(grp["file"])
        test_files = files[::4][:3]
        (out / TRAIN_DIR / cam).mkdir(parents=True, exist_ok=True)
        (out / TEST_DIR).mkdir(parents=True, exist_ok=True)
        for f in files:
            img = read_image(Path("../shared/data/real_cameras") / f)
            h, w = img.shape[:2]
            y0, x0 = centre_offset(h, 1024, 16), centre_offset(w, 1024, 16)
            region = img[y0:y0 + 1024, x0:x0 + 1024]
            name = Path(f).stem
            if f in test_files:
                for i in range(4):
                    for j in range(4):
                        y, x = 16 + 240 * i + phase[0], 16 + 240 * j + phase[1]
                        fname = f"img_{abs(hash((name, i, j))) % 16**7:07x}_unalt.tif"
                        Image.fromarray(np.ascontiguousarray(region[y:y + 256, x:x + 256])).save(out / TEST_DIR / fname)
                        truth.append({"fname": fname, "camera": cam})
            else:
                Image.fromarray(region).save(out / TRAIN_DIR / cam / f"{name}.png")
    pd.DataFrame(truth).to_csv(out / "truth.csv", index=False)
    print(out, len(truth), "test crops")


if __name__ == "__main__":
    main()
