"""`camid check`: what a run needs before it starts, checked in minutes rather than found
hours into a night of GPUs. Each part returns plan lines and blockers (what must be fixed
before `train-all`); the command prints both and exits non-zero on a blocker."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def crop_size_problem(sizes: Iterable[tuple[int, int]], crop: int) -> tuple[str, str]:
    """(problem, note) for test crops of these (width, height) sizes against ``predict.crop``.

    problem (a blocker): the test crops' usual size is not ``crop`` x ``crop``; level 2 learns from
    OOF rows (centre crops of ``predict.crop``) what the test rows look like, so both must be
    crops of one size. note: a few test files of another size (predicted as they are)."""
    counts = Counter(sizes)
    if not counts:
        return "", ""
    usual, _ = counts.most_common(1)[0]
    seen = ", ".join(f"{n} of {w}x{h}" for (w, h), n in counts.most_common())
    if usual != (crop, crop):
        return (f"test crops are {seen} px but predict.crop is {crop}: OOF rows would be made at another size "
                f"than the test rows they stand in for; set predict.crop to the test crops' side"), ""
    odd = sum(n for size, n in counts.items() if size != usual)
    return "", (f"{odd} test file(s) are not {crop}x{crop} ({seen}); they are predicted at their own size"
                if odd else "")
