"""`camid` console command: one subcommand per stage.

Each subcommand lives in the module that implements it, which provides
``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported only
when their subcommand runs, so ``camid score`` does not pay for importing torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("camid.simulate", "write a simulated competition in the Kaggle layout"),
    "folds": ("camid.folds_cmd", "build deterministic stratified folds (CSV)"),
    "train": ("camid.train", "train one backbone on one fold"),
    "train-all": ("camid.train_all", "train every (backbone, fold) job of a config"),
    "predict": ("camid.predict", "out-of-fold and test probability tables with TTA"),
    "blend": ("camid.blend", "average / equalise / stack probability tables"),
    "submission": ("camid.submit", "write validated submission CSVs and the score table"),
    "score": ("camid.metrics", "score a submission against a solution file"),
    "filter-external": ("camid.filter_external", "filter external photos by EXIF, size, quality"),
    "identify": ("camid.identify", "identify the camera model of arbitrary photos"),
    "robustness": ("camid.robustness", "accuracy vs JPEG quality, gamma, resize and crop size (PNG + CSV)"),
    "prnu": ("camid.prnu", "PRNU sensor-fingerprint baseline: device verification ROC/AUC/EER"),
    "bench": ("camid.bench", "benchmarks: sample pipeline, equalisation, stackers, GPU"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<16} {helptext}" for name, (_, helptext) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="camid",
        description="Source camera model identification harness.",
        epilog=f"subcommands:\n{lines}\n\nRun `camid <subcommand> --help` for its options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        from . import __version__
        print(__version__)
        return 0
    if argv[0] not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"camid: unknown subcommand {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    name = argv[0]
    module_name, helptext = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(f"camid {name}: not available in this version", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"camid {name}", description=helptext)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    from .errors import run_guarded
    return run_guarded(name, lambda: module.main(args))


if __name__ == "__main__":
    sys.exit(main())
