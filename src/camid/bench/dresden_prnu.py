"""Dresden PRNU figures for BENCHMARKS.md: fingerprints from each device's flat-fields, every
natural photo against every fingerprint, for 512-px centre crops and the whole frame.

    PYTHONPATH=src python -m camid.bench.dresden_prnu [--data ../shared/data/dresden_prnu]
                                                      [--modes 512,512-search,full] [--workers 2]

It calls the functions behind `camid prnu fingerprint` and `camid prnu match`
(``prnu_tools.build_fingerprint`` / ``match_paths``), so its numbers are the commands'
numbers; a match run here computes a query's residual once for all four fingerprints.
Single-match wall time is measured separately: one query against one fingerprint, one
process, as one `camid prnu match` call does per query. Writes, per mode,
``OUT/<mode>/pairs.csv`` (one row per query x fingerprint) and ``OUT/summary.json``;
prints the Markdown tables.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from camid.bench.common import REPO
from camid.forensics import prnu, prnu_tools
from camid.util.io import write_csv, write_json

THRESHOLD = prnu_tools.DEFAULT_THRESHOLD
MODES = {"512": (512, False), "512-search": (512, True), "full": (None, False)}


def device_of(path: str | Path) -> str:
    return "_".join(Path(path).name.split("_")[1:3])  # Nikon_D70s_1_22750.JPG -> D70s_1


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(), "numpy": np.__version__}


def run_mode(mode: str, data: Path, out: Path, workers: int) -> dict:
    crop, search = MODES[mode]
    flats = sorted((data / "flatfield").glob("*.JPG"))
    naturals = sorted((data / "natural").glob("*.JPG"))
    devices = sorted({device_of(p) for p in flats})
    fps, fp_seconds = {}, {}
    for dev in devices:
        t0 = time.perf_counter()
        fps[dev] = prnu_tools.build_fingerprint([p for p in flats if device_of(p) == dev], crop=crop,
                                                workers=workers)
        fp_seconds[dev] = round(time.perf_counter() - t0, 1)
        prnu_tools.save_fingerprint(fps[dev], out / mode / f"{dev}.npz")
    t0 = time.perf_counter()
    results = prnu_tools.match_paths([fps[d] for d in devices], naturals, search=search, workers=workers)
    all_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()  # one query, one fingerprint, one process: what `camid prnu match` pays per query
    prnu_tools.match_paths([fps[devices[0]]], naturals[:1], search=search, workers=1)
    single_seconds = time.perf_counter() - t0

    rows = [{"query": Path(q).name, "query_device": device_of(q), "fingerprint": dev, **r.row()}
            for q, per_fp in zip(naturals, results, strict=True) for dev, r in zip(devices, per_fp, strict=True)]
    pairs = pd.DataFrame(rows)
    if (pairs["error"] != "").any():
        raise SystemExit(f"unreadable photos: {pairs.loc[pairs['error'] != '', 'query'].unique().tolist()}")
    pairs["same_device"] = pairs["query_device"] == pairs["fingerprint"]
    write_csv(out / mode / "pairs.csv", pairs.drop(columns=["file"]))

    table = []
    for (dev, qdev), g in pairs.groupby(["fingerprint", "query_device"]):
        passed = int((g["pce"] >= THRESHOLD).sum())
        table.append({"fingerprint": dev, "query_device": qdev, "n": len(g), "median_pce": float(g["pce"].median()),
                      "min_pce": float(g["pce"].min()), "max_pce": float(g["pce"].max()),
                      "true_pos": passed if dev == qdev else 0, "false_pos": 0 if dev == qdev else passed,
                      "missed": len(g) - passed if dev == qdev else 0})
    auc = {}
    for dev, g in pairs.groupby("fingerprint"):
        auc[dev] = {s: prnu.roc_summary(g[s].to_numpy(), g["same_device"].to_numpy())["auc"] for s in ("pce", "ncc")}
    auc["all pairs"] = {s: prnu.roc_summary(pairs[s].to_numpy(), pairs["same_device"].to_numpy())["auc"]
                        for s in ("pce", "ncc")}
    best = pairs.loc[pairs.groupby("query")["pce"].idxmax()]
    same = pairs[pairs["same_device"]]
    return {
        "mode": mode, "crop": crop, "search": search, "table": table, "auc": auc,
        "right_device_first": int((best["fingerprint"] == best["query_device"]).sum()), "queries": len(naturals),
        "true_pos": int((same["pce"] >= THRESHOLD).sum()), "positives": len(same),
        "false_pos": int((pairs.loc[~pairs["same_device"], "pce"] >= THRESHOLD).sum()),
        "negatives": int((~pairs["same_device"]).sum()),
        "max_other_pce": float(pairs.loc[~pairs["same_device"], "pce"].max()),
        "seconds": {"fingerprint_per_device": fp_seconds,
                    "match_all_14x4": round(all_seconds, 1),
                    "match_per_query_all_4": round(all_seconds / len(naturals), 2),
                    "single_match_1_process": round(single_seconds, 2)},
    }


def markdown(res: dict) -> str:
    how = "peak searched over all circular shifts" if res["search"] else "zero shift"
    lines = [f"**{res['mode']}** (crop {res['crop'] or 'none: 3008x2000 whole frame'}, {how})", "",
             "| fingerprint | query device | photos | median PCE | min–max PCE | PCE ≥ 60 | decision |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in res["table"]:
        same = r["fingerprint"] == r["query_device"]
        passed = r["true_pos"] if same else r["false_pos"]
        verdict = (f"{r['true_pos']} true match, {r['missed']} missed" if same
                   else ("no false match" if not passed else f"**{passed} FALSE match**"))
        lines.append(f"| {r['fingerprint']} | {r['query_device']} | {r['n']} | {r['median_pce']:.1f} | "
                     f"{r['min_pce']:.1f} – {r['max_pce']:.1f} | {passed} | {verdict} |")
    lines += ["", "| fingerprint | AUC (PCE) | AUC (NCC) |", "| --- | ---: | ---: |"]
    lines += [f"| {d} | {a['pce']:.3f} | {a['ncc']:.3f} |" for d, a in res["auc"].items()]
    s = res["seconds"]
    per_fp = ", ".join(f"{d} {v} s" for d, v in s["fingerprint_per_device"].items())
    lines += ["", (f"Right device ranked first: {res['right_device_first']}/{res['queries']}. At PCE 60: "
                   f"{res['true_pos']}/{res['positives']} same-device pairs pass, "
                   f"{res['false_pos']}/{res['negatives']} other-device pairs pass "
                   f"(highest other-device PCE {res['max_other_pce']:.1f})."),
              (f"Wall time: fingerprint (10 flat-fields) {per_fp}; 14 queries x 4 fingerprints "
               f"{s['match_all_14x4']} s ({s['match_per_query_all_4']} s per query, residual shared by the 4 "
               f"fingerprints); one query against one fingerprint in one process {s['single_match_1_process']} s.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "dresden_prnu"))
    ap.add_argument("--modes", default="512,512-search,full", help=f"comma-separated, from {list(MODES)}")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(REPO / "bench_out" / "dresden_prnu"))
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not (data / "flatfield").is_dir():
        print(f"Dresden photos not found at {data}", file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        print(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}", file=sys.stderr)
        return 2
    before = machine()
    t0 = time.perf_counter()
    results = [run_mode(m, data, out, args.workers) for m in modes]
    summary = {"machine_before": before, "machine_after": machine(), "workers": args.workers,
               "total_seconds": round(time.perf_counter() - t0, 1), "results": results}
    write_json(out / "summary.json", summary)
    for res in results:
        print(markdown(res) + "\n")
    print(f"machine: {before['cpu']}, {before['cores']} cores, load average {before['load_average']} before, "
          f"{summary['machine_after']['load_average']} after; {args.workers} worker(s); "
          f"total {summary['total_seconds']} s; wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
