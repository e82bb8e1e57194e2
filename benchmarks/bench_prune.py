"""Dynamic data pruning inside the training run: full training vs CLD-guided vs InfoBatch vs
uniform random pruning, at equal shares of sample-passes saved.

Every run is one :func:`cldfast.pipeline.train` with a :class:`cldfast.pipeline.PruneSpec`
(:mod:`cldfast.pruning`) on the same training split (the embedded Fashion-MNIST's training
images minus a seeded 10 % per class held out as the validation split V, which only the CLD
policies use: their tracker correlates the kept samples' training losses with V's per-class
loss, and V's eval pass is counted in their wall time). Each (policy, target saving) cell is
trained with ``--seeds`` seeds (seed s: initialisation, shuffling and the pruning draws) and
tested on the whole test split; accuracies are mean ± std (sample std) over seeds, and
"vs full" is the mean of the per-seed differences to the full run of the same seed.

Policies (cldfast.pruning): ``cld`` (prune low live CLD first, rescale kept losses by
1/(1-p)), ``infobatch`` at the target saving (its prune ratio solved per epoch) and with its own
default (ratio 0.5, delta 0.875), ``random`` (uniform, no rescaling); ``--variants`` adds more
(e.g. ``cld-abs@0.4``). Sample-passes = forward + backward of one sample; the saving is
measured, not assumed. Wall time is the training loop's, median over seeds.

Cells are cached in ``--work`` (one JSON each; a re-run skips them), the RESULTS.md section and
the plot are rewritten after every finished seed, so partial results appear as they come.

    python benchmarks/bench_prune.py                        # embedded data, writes 'prune'
    python benchmarks/bench_prune.py --report-only          # rewrite the section from cells
    python benchmarks/bench_prune.py --smoke --no-write --work /tmp/prune
    python benchmarks/bench_prune.py --cifar DIR            # CIFAR-100, ResNet-18, GPU only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import mean_std, ms, paired_diffs, set_threads  # noqa: E402
from _results import RESULTS, markdown_table, write_section  # noqa: E402

from cldfast.data import split_train_val  # noqa: E402
from cldfast.io import write_json  # noqa: E402
from cldfast.pipeline import DataSpec, PruneSpec, train  # noqa: E402
from cldfast.training import Recipe  # noqa: E402

PLOT = ROOT / "docs" / "prune_accuracy.png"
COLORS = {"cld": "black", "cld-abs": "tab:purple", "infobatch": "tab:red", "random": "tab:gray",
          "infobatch-default": "tab:orange"}


def cells_plan(savings: list[float], policies: list[str], variants: list[str],
               infobatch_default: bool) -> list[tuple[str, PruneSpec | None]]:
    plan: list[tuple[str, PruneSpec | None]] = [("full", None)]
    for s in savings:
        for p in policies:
            plan.append((f"{p}@{s:g}", PruneSpec(p, saving=s)))
    if infobatch_default:
        plan.append(("infobatch-default", PruneSpec("infobatch")))
    for v in variants:
        p, s = v.split("@")
        plan.append((f"{p}@{float(s):g}", PruneSpec(p, saving=float(s))))
    return plan


def run_cell(work: Path, bundle, train_idx, val_idx, arch: str, recipe: Recipe, label: str,
             spec: PruneSpec | None, seed: int, config: dict[str, Any]) -> dict[str, Any]:
    path = work / "cells" / f"{label}-s{seed}.json"
    cfg = {**config, "label": label, "seed": seed, "spec": asdict(spec) if spec else None}
    if path.is_file():
        cell = json.loads(path.read_text())
        if cell.get("config") == json.loads(json.dumps(cfg)):
            return cell
        raise SystemExit(f"{path} was written with other settings; use another --work")
    t0 = time.perf_counter()
    m = train(bundle, work / "runs", arch=arch, recipe=Recipe(**{**asdict(recipe), "seed": seed}),
              indices=train_idx, val_indices=val_idx, name=f"{label}-s{seed}", prune=spec,
              progress=False, resume=True)
    wall = time.perf_counter() - t0
    n = int(train_idx.size)
    prune = m.get("prune") or {}
    cell = {"label": label, "policy": spec.policy if spec else "full",
            "target": (spec.saving or 0.0) if spec else 0.0, "seed": seed,
            "test_accuracy": m["test_accuracy"],
            "saved": float(prune.get("saved", 0.0)),
            "sample_passes": int(prune.get("sample_passes", recipe.epochs * n)),
            "train_seconds": float(m["seconds"]), "wall_seconds": wall,
            "tracking_seconds": float(prune.get("tracking_seconds", 0.0)),
            "config": json.loads(json.dumps(cfg))}
    if prune.get("epochs"):
        cell["ratios"] = [e.get("ratio") for e in prune["epochs"]]
    if m.get("scores_file"):
        sf = np.load(m["scores_file"])
        nd = sf["extra_num_differences"]
        cell["cld_scored_share"] = float(np.isfinite(sf["scores"]).mean())
        cell["cld_mean_differences"] = float(nd.mean())
    write_json(path, cell)
    ckpt = work / "runs" / "checkpoints" / f"{label}-s{seed}.pt"
    if ckpt.exists():
        ckpt.unlink()
    return cell


def aggregate(cells: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    full = {c["seed"]: c for c in cells if c["policy"] == "full"}
    out: dict[str, dict[str, Any]] = {}
    for c in cells:
        r = out.setdefault(c["label"], {"policy": c["policy"], "target": c["target"], "cells": []})
        r["cells"].append(c)
    for label, r in out.items():
        cs = sorted(r["cells"], key=lambda c: c["seed"])
        r["accs"] = [100 * c["test_accuracy"] for c in cs]
        r["acc"], r["acc_std"] = mean_std(r["accs"])
        r["saved_list"] = [100 * c["saved"] for c in cs]
        r["saved"], _ = mean_std(r["saved_list"])
        r["wall"] = statistics.median(c["train_seconds"] for c in cs)
        r["passes"] = statistics.median(c["sample_passes"] for c in cs)
        r["diffs"] = [100 * (c["test_accuracy"] - full[c["seed"]]["test_accuracy"])
                      for c in cs if c["seed"] in full]
        r["vs_full"], _ = mean_std(r["diffs"])
        r["seeds"] = len(cs)
        if any("cld_mean_differences" in c for c in cs):
            r["cld_diffs"] = float(np.mean([c["cld_mean_differences"] for c in cs]))
            r["cld_scored"] = float(np.mean([c["cld_scored_share"] for c in cs]))
    return out


def _pruning_epochs(epochs: int) -> str:
    from cldfast.training.pruning import RandomPruner

    e = RandomPruner(1, epochs, saving=0.01).pruning_epochs
    return f"{e[0] + 1}-{e[-1] + 1}" if e else "none"


def paired(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """Per-seed accuracy differences a - b (points), over the seeds both rows hold."""
    return paired_diffs({c["seed"]: 100 * c["test_accuracy"] for c in a["cells"]},
                        {c["seed"]: 100 * c["test_accuracy"] for c in b["cells"]})


def report(res: dict[str, dict[str, Any]], args, epochs: int, n_train: int, n_val: int,
           minutes: float) -> str:
    full = res.get("full")
    order = sorted(res, key=lambda k: (res[k]["target"], k != "full", k))
    rows = []
    for k in order:
        r = res[k]
        rel = r["wall"] / full["wall"] if full else float("nan")
        extra = ""
        if "cld_diffs" in r:
            extra = f"{r['cld_diffs']:.1f} of {epochs - 1}; {100 * r['cld_scored']:.1f} % scored"
        rows.append([k, r["seeds"], f"{r['target'] * 100:.0f} %" if r["target"] else
                     ("InfoBatch's own" if k == "infobatch-default" else "-"),
                     ms(r["saved_list"], unit=" %"), f"{r['passes'] / 1e6:.3f} M",
                     ms(r["accs"], unit=" %"), "-" if k == "full" else ms(r["diffs"]),
                     f"{r['wall']:.0f} s", f"{rel:.2f}x", extra])
    table = markdown_table(["run", "seeds", "target saving", "sample-passes saved",
                            "sample-passes (median)", "test accuracy", "vs full (points, paired)",
                            "train wall time (median)", "wall vs full", "CLD of the run: mean "
                            "differences per sample; share scored"], rows)
    lines = []
    spread = max((r["acc_std"] for r in res.values() if np.isfinite(r["acc_std"])), default=float("nan"))
    for s in sorted({r["target"] for r in res.values() if r["target"]}):
        cld, ib, rnd = res.get(f"cld@{s:g}"), res.get(f"infobatch@{s:g}"), res.get(f"random@{s:g}")
        if not (cld and full):
            continue
        txt = (f"- {s * 100:.0f} % target: CLD-guided {ms(cld['diffs'])} "
               f"points vs full (saved {cld['saved']:.1f} %)")
        if ib:
            txt += f"; CLD - InfoBatch {ms(paired(cld, ib))} (InfoBatch saved {ib['saved']:.1f} %)"
        if rnd:
            txt += f"; CLD - random {ms(paired(cld, rnd))}"
        lines.append(txt + ".")
    goal = res.get("cld@0.4")
    verdict = ""
    if goal and full and res.get("infobatch@0.4"):
        d_ib = paired(goal, res["infobatch@0.4"])
        m_ib = mean_std(d_ib)[0]
        within = abs(goal["vs_full"]) <= 0.3 or goal["vs_full"] > 0
        verdict = (f"Goal at 40 % saved (CLD-guided within 0.3 points of full and at least as "
                   f"accurate as InfoBatch): within 0.3 of full: "
                   f"{'met' if within else 'NOT met'} ({goal['vs_full']:+.2f}); vs InfoBatch: "
                   f"{'met' if m_ib >= 0 else 'NOT met'} ({ms(d_ib)}, paired over seeds). "
                   f"The largest seed std of any row is {spread:.2f} points: a difference below "
                   "it is no difference.")
    head = (f"Embedded Fashion-MNIST: {n_train:,} training samples (the training split; "
            f"{n_val:,} held out per class as V, used by the CLD policies only), small CNN, "
            f"{epochs} epochs, batch {args.batch_size}, SGD lr 0.1 Nesterov multistep (the "
            f"authors' recipe shape), CPU, {args.threads} torch thread(s); "
            f"{max(r['seeds'] for r in res.values())} seed(s) per row (seeds 0, 1, ...: "
            "initialisation, shuffling and the pruning draws); "
            f"{minutes:.0f} min of compute in the cached cells. Wall times come from a shared "
            "2-core machine (other work ran beside the benchmark), so they are indicative; "
            "sample-passes are the exact cost. "
            "Every pruning policy trains on everything in epoch 0 and in the epochs after "
            f"delta = 0.875 of the run (InfoBatch's schedule: epochs {_pruning_epochs(epochs)} "
            f"of {epochs} prune, 1-based). The CLD "
            "policies feed the tracker the kept samples' own training losses (train mode: no "
            "extra pass over the training split; the eval pass over V each epoch is in their "
            "wall time). Command: `python benchmarks/bench_prune.py"
            f"{' --seeds ' + str(args.seeds) if args.seeds != 3 else ''}`.")
    plot_note = f"![accuracy vs sample-passes saved](../docs/{PLOT.name})" if not args.no_write else ""
    return "\n\n".join(x for x in [head, table, "\n".join(lines), verdict, plot_note] if x)


def plot(res: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cldfast.io import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    full = res.get("full")
    if full:
        ax.axhspan(full["acc"] - (full["acc_std"] if np.isfinite(full["acc_std"]) else 0),
                   full["acc"] + (full["acc_std"] if np.isfinite(full["acc_std"]) else 0),
                   color="tab:blue", alpha=0.15, label=f"full training ({full['acc']:.2f} %)")
        ax.axhline(full["acc"], color="tab:blue", lw=1)
    for policy in ("cld", "cld-abs", "infobatch", "random"):
        rows = sorted((r for k, r in res.items() if r["policy"] == policy and k != "infobatch-default"),
                      key=lambda r: r["saved"])
        if not rows:
            continue
        ax.errorbar([r["saved"] for r in rows], [r["acc"] for r in rows],
                    yerr=[0 if not np.isfinite(r["acc_std"]) else r["acc_std"] for r in rows],
                    marker="o", capsize=3, color=COLORS[policy],
                    label={"cld": "CLD-guided", "cld-abs": "CLD-guided (|CLD|)",
                           "infobatch": "InfoBatch (ratio for the saving)",
                           "random": "random dynamic"}[policy])
    if "infobatch-default" in res:
        r = res["infobatch-default"]
        ax.errorbar([r["saved"]], [r["acc"]], yerr=[0 if not np.isfinite(r["acc_std"]) else r["acc_std"]],
                    marker="s", capsize=3, color=COLORS["infobatch-default"], ls="none",
                    label="InfoBatch default (r=0.5)")
    ax.set_xlabel("sample-passes saved (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10,
                    help="epochs of every run (default: %(default)s; 164 with --cifar)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per row (default: %(default)s)")
    ap.add_argument("--savings", default="0.3,0.4,0.5", help="target savings (default: %(default)s)")
    ap.add_argument("--policies", default="cld,infobatch,random", help="default: %(default)s")
    ap.add_argument("--variants", default="cld-abs@0.4",
                    help="more POLICY@SAVING rows, comma-separated (default: %(default)s; '' for none)")
    ap.add_argument("--no-infobatch-default", action="store_true",
                    help="leave out InfoBatch with its own ratio 0.5")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=None,
                    help="cell cache (default: benchmarks/_work/prune; with --smoke a fresh "
                         "temporary folder)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--report-only", action="store_true", help="rewrite the section from cached cells")
    ap.add_argument("--smoke", action="store_true", help="digits, 4 epochs, 1 seed, one saving")
    ap.add_argument("--cifar", metavar="DIR",
                    help="CIFAR-100 in DIR (torchvision layout), ResNet-18, the authors' CIFAR "
                         "recipe (164 epochs unless --epochs is given); needs a CUDA GPU; writes "
                         "the section 'prune-cifar' and docs/prune_accuracy_cifar.png")
    args = ap.parse_args(argv)
    args.arch, args.section = "small-cnn", "prune"
    args.title = "Dynamic pruning inside the training run (embedded data)"
    args.data = DataSpec("auto")
    if args.smoke:
        args.data = DataSpec("digits")
        args.epochs, args.seeds, args.savings, args.variants = 4, 1, "0.3", ""
        if args.work is None:
            import tempfile

            args.work = Path(tempfile.mkdtemp(prefix="cldfast-prune-smoke-"))
    if args.work is None:
        args.work = HERE / "_work" / "prune"
    if args.cifar:
        args.data = DataSpec("cifar100", args.cifar)
        args.arch, args.section = "resnet18", "prune-cifar"
        args.title = "Dynamic pruning inside the training run (CIFAR-100, ResNet-18)"
        if args.epochs == 10:
            args.epochs = 164
    return args


def write_report(args, bundle, n_train: int, n_val: int) -> None:
    """Rewrite the section and the plot from every cached cell of this data and schedule."""
    cached = [json.loads(p.read_text()) for p in sorted((args.work / "cells").glob("*.json"))]
    cached = [c for c in cached if c.get("config", {}).get("dataset") == bundle.fingerprint
              and c["config"].get("recipe", {}).get("epochs") == args.epochs]
    if not cached:
        return
    res = aggregate(cached)
    minutes = sum(c["wall_seconds"] for c in cached) / 60
    body = report(res, args, args.epochs, n_train, n_val, minutes)
    print(body, flush=True)
    if not args.no_write:
        png = PLOT if not args.cifar else PLOT.with_name("prune_accuracy_cifar.png")
        if Path(args.results).resolve() != RESULTS.resolve():  # e.g. the smoke run: beside it
            png = Path(args.results).parent / png.name
        plot(res, png, f"{args.arch} on {bundle.name}, {args.epochs} epochs, mean ± std over seeds")
        write_section(args.section, args.title, "benchmarks/bench_prune.py", body, args.results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cifar and not torch.cuda.is_available():
        print("bench_prune: --cifar needs a CUDA GPU (ResNet-18 on CIFAR-100 is days on a CPU)",
              file=sys.stderr)
        return 2
    set_threads(args.threads)
    savings = [float(s) for s in args.savings.split(",") if s]
    policies = [p for p in args.policies.split(",") if p]
    variants = [v for v in args.variants.split(",") if v]
    plan = cells_plan(savings, policies, variants, not args.no_infobatch_default and not args.smoke)
    bundle = args.data.load()
    train_idx, val_idx = split_train_val(bundle.train_targets, 0.1, 0)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, device="auto")
    config = {"dataset": bundle.fingerprint, "arch": args.arch, "recipe": asdict(recipe)}
    t_start = time.perf_counter()
    for seed in range(0 if args.report_only else args.seeds):
        for label, spec in plan:
            t0 = time.perf_counter()
            c = run_cell(args.work, bundle, train_idx, val_idx, args.arch, recipe, label, spec,
                         seed, config)
            print(f"bench_prune: {label} seed {seed}: {100 * c['test_accuracy']:.2f} %, saved "
                  f"{100 * c['saved']:.1f} % ({time.perf_counter() - t0:.0f} s)", flush=True)
        write_report(args, bundle, int(train_idx.size), int(val_idx.size))
    if args.report_only:
        write_report(args, bundle, int(train_idx.size), int(val_idx.size))
    print(f"bench_prune: done in {(time.perf_counter() - t_start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
