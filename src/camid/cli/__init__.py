"""The ``camid`` console command: one thin module per subcommand under ``camid.cli``.

Each command module provides ``add_arguments(parser)`` and ``main(args) -> int`` and is
imported only when its subcommand runs, so ``camid score`` does not pay for importing
torch. A ``Group`` holds nested subcommands (``camid <group> <command>``).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Command:
    module: str  # provides add_arguments(parser) and main(args) -> int
    help: str


@dataclass(frozen=True)
class Group:
    help: str
    commands: dict[str, Command | Group] = field(default_factory=dict)
    # Said (as the error, exit code 2) when options come where a subcommand is expected:
    # where the options of an older, single-command form of the group went.
    moved: str = ""


COMMANDS: dict[str, Command | Group] = {
    "simulate": Command("camid.cli.simulate", "write a simulated competition in the Kaggle layout"),
    "compose": Command("camid.cli.compose", "a competition in the Kaggle layout from your own photos"),
    "folds": Command("camid.cli.folds", "build deterministic stratified folds (CSV)"),
    "train": Command("camid.cli.train", "train one backbone on one fold"),
    "train-all": Command("camid.cli.train_all", "train every (backbone, fold) job of a config"),
    "predict": Command("camid.cli.predict", "out-of-fold and test probability tables with TTA"),
    "blend": Command("camid.cli.blend", "average / equalise / stack probability tables"),
    "pseudo": Command("camid.cli.pseudo", "balanced pseudo-labels from a round's level 2 for the next round"),
    "submission": Command("camid.cli.submission", "write validated submission CSVs and the score table"),
    "score": Command("camid.cli.score", "score a submission against a solution file"),
    "filter-external": Command("camid.cli.filter_external", "filter external photos by EXIF, size, quality"),
    "identify": Command("camid.cli.identify", "identify the camera model of arbitrary photos"),
    "robustness": Command("camid.cli.robustness",
                          "accuracy vs JPEG quality, gamma, resize and crop size (PNG + CSV)"),
    "prnu": Group("PRNU sensor fingerprints: fingerprint a device, match photos, evaluate", {
        "evaluate": Command("camid.cli.prnu_evaluate",
                            "competition folders: device vs model verification ROC/AUC/EER"),
        "fingerprint": Command("camid.cli.prnu_fingerprint",
                               "a device fingerprint (.npz) from photos (files and/or folders)"),
        "match": Command("camid.cli.prnu_match",
                         "NCC/PCE of photos against a fingerprint, decision at a PCE threshold"),
    }, moved="the competition evaluation is now `camid prnu evaluate` (same options: --config, --data, --out, "
             "--n-ref, ...); see `camid prnu --help` for fingerprint and match"),
    "weights": Group("ImageNet weights of the backbones: fetch and verify them into weights_dir", {
        "fetch": Command("camid.cli.weights_fetch",
                         "download (or copy from a mirror) and verify the weights of a config's backbones"),
    }),
    "check": Command("camid.cli.check", "preflight before train-all: data, weights, GPUs, disk, jobs, time"),
    "bench": Command("camid.cli.bench", "benchmarks: sample pipeline, equalisation, stackers, GPU"),
    "kaggle": Group("the competition on Kaggle, through the official kaggle CLI and your credentials", {
        "download": Command("camid.cli.kaggle_download", "download and unpack the competition data"),
        "submit": Command("camid.cli.kaggle_submit", "validate and submit a submission CSV (a late submission)"),
    }),
}


def _group_parser(prog: str, description: str, commands: dict[str, Command | Group]) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<16} {entry.help}" for name, entry in commands.items())
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"subcommands:\n{lines}\n\nRun `{prog} <subcommand> --help` for its options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from .. import __version__
        print(__version__)
        return 0
    node: Command | Group = Group("Source camera model identification harness.", COMMANDS)
    path: list[str] = []
    while isinstance(node, Group):
        prog = " ".join(["camid", *path])
        parser = _group_parser(prog, node.help, node.commands)
        if not argv or argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        if argv[0].startswith("-") and node.moved:
            print(f"{prog}: error: {node.moved}", file=sys.stderr)
            return 2
        if argv[0] not in node.commands:
            parser.print_usage(sys.stderr)
            print(f"{prog}: unknown subcommand {argv[0]!r}; choose from {', '.join(node.commands)}", file=sys.stderr)
            return 2
        path.append(argv.pop(0))
        node = node.commands[path[-1]]
    name = " ".join(path)
    module = importlib.import_module(node.module)
    parser = argparse.ArgumentParser(prog=f"camid {name}", description=node.help)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    from ..data.images import apply_pixel_limit
    from ..errors import run_guarded

    apply_pixel_limit()
    return run_guarded(name, lambda: module.main(args))
