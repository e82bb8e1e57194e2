"""Selection rules beyond top-k: which rule, over CLD or a baseline score, beats random coresets?

Settings (the fidelity study's protocol, benchmarks/bench_fidelity.py: a seeded 1,000 per
class subset of the embedded Fashion-MNIST training images, 10 % of it held out per class as
the validation split V, small CNN proxy and retrained models, full 10,000-image test split):

  clean        no label noise
  noise20      20 % of the labels flipped (symmetric, seeded), V noisy too (what the
               pipeline's default split gives)
  noise20-cv   the same flips, V with its true labels (a user with a curated V)
  noise40 / noise40-cv   40 % flipped

One eval-mode proxy per setting (CLD, the paper's estimator, with AUM / forgetting / EL2N
recorded from the same training pass). For each budget (``--fractions``), every rule of
``cldfast.selection.RULES`` with its automatic parameters (chosen from the training scores
and the budget only, never the test set) over CLD and over the setting's best baseline (the
baseline whose hard end holds the flipped samples best; AUM on clean data; the rules treat
the end away from a score's hard end as best, the top rule keeps the method's own end),
CLD's filtered rule with q from the baseline's noise estimate and at fixed q (a sweep),
plus class-balanced random coresets and, under noise, the oracle (random among the truly
clean samples). Every
coreset is retrained with ``--seeds`` seeds; the table gives mean ± std (sample std) and the
paired difference against random (same seeds: mean ± std of the per-seed differences).

Cells (proxies and retrainings) are cached in ``--work``: a re-run skips them, and the
RESULTS.md section is rewritten from every cached cell after each budget. The grid costs
hours of CPU; budgets run in the order given (``--fractions``), settings in ``--settings``.

    python benchmarks/bench_rules.py                              # all, writes 'rules'
    python benchmarks/bench_rules.py --fractions 0.1,0.3 --settings noise20-cv,clean
    python benchmarks/bench_rules.py --smoke --no-write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import RESULTS, markdown_table, write_section  # noqa: E402
import bench_fidelity as fid  # noqa: E402

from cldfast.data import split_train_val  # noqa: E402
from cldfast.selection import (METHODS, RULES, auto_params, estimate_noise_rate,  # noqa: E402
                               select_by_rule)

SETTINGS = ("noise20-cv", "noise20", "clean", "noise40-cv", "noise40")
BASELINES = ("aum", "forgetting", "el2n")
SWEEP_Q = (0.1, 0.2, 0.3, 0.4)  # CLD's filtered rule at fixed shares dropped per class


class RulesStudy(fid.Study):
    """The fidelity study's data and cell cache, with label noise at any rate and a clean V."""

    def setting(self, name: str):
        if name in self._bundles:
            return self._bundles[name]
        rate = {"clean": 0.0, "noise20": 0.2, "noise40": 0.4}[name.removesuffix("-cv")]
        rng = np.random.default_rng(1234)
        targets = self.full.train_targets
        chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(targets == c), self.args.n,
                                                    replace=False) for c in range(10)]))
        noisy = targets.copy()
        bundle = self.full
        if rate:
            rng_n = np.random.default_rng(2024)
            flip = rng_n.choice(chosen, int(round(rate * chosen.size)), replace=False)
            noisy[flip] = (targets[flip] + rng_n.integers(1, 10, flip.size)) % 10
        sub_t, sub_v = split_train_val(noisy[chosen], 0.1, 0)
        train_idx, val_idx = chosen[sub_t], chosen[sub_v]
        if name.endswith("-cv"):
            noisy[val_idx] = targets[val_idx]  # a curated V: its true labels
        if rate:
            bundle = fid.relabeled(self.full, noisy, name)
        flipped = noisy[train_idx] != targets[train_idx]
        self._bundles[name] = (bundle, train_idx, val_idx, flipped)
        return self._bundles[name]


def best_baseline(p: dict) -> str:
    """The baseline whose hard end holds the flipped samples best (AUROC); AUM without noise."""
    if not p["flipped"].any():
        return "aum"

    def auroc(name: str) -> float:
        s = p[name] if METHODS[name].hard == "top" else -p[name]  # high = hard end
        return fid.auroc(s, p["flipped"])

    return max(BASELINES, key=auroc)


def rule_coreset(p: dict, score: str, rule: str, f: float, seed: int = 0,
                 params: dict | None = None):
    """A coreset by ``rule`` over ``score`` (the top rule keeps the method's own end, the
    others its ``rule_keep`` end); ``params`` default: the automatic choice."""
    info = METHODS["cld" if score == "eval_cld" else score]
    keep = info.order if rule == "top" else info.rule_keep
    values = p[score]
    params = params if params is not None else auto_params(rule, values, p["labels"],
                                                           fraction=f, keep=keep)
    idx = select_by_rule(values, p["labels"], rule=rule, fraction=f, keep=keep, seed=seed,
                         dataset_indices=p["train_idx"], params=params)
    return idx, params, keep


def run_budget(st: RulesStudy, setting: str, f: float, R: dict) -> None:
    p = st.proxy(setting, st.args.proxy_epochs, 0)
    base = best_baseline(p)
    cell = R.setdefault(setting, {"baseline": base, "fractions": {}}).setdefault("fractions", {})
    out = cell.setdefault(f, {})
    # Random and oracle coresets ignore V: one set of cells serves both V variants.
    data = setting.removesuffix("-cv")
    out["random"] = st.random_accs(data, p, f)
    if p["flipped"].any() and (not st.args.only or "oracle" in st.args.only):
        clean = np.where(p["flipped"], np.nan, 0.0)  # NaN: never picked
        out["oracle"] = [st.retrain(data, f"oracle-f{f:g}-d{s}",
                                    st.coreset(p, clean, f, "random", seed=s), s,
                                    st.args.retrain_epochs)["accuracy"]
                         for s in st.retrain_seeds]
    # CLD's filtered rule with its q from the best baseline's noise estimate, and a sweep.
    q_base = estimate_noise_rate(p[base], keep=METHODS[base].rule_keep)
    variants = [("eval_cld", "CLD", rule, None, "") for rule in RULES]
    variants += [("eval_cld", "CLD", "filtered", {"q": round(q_base, 4)}, f" (q from {base})")]
    if any(abs(f - s) < 1e-12 for s in st.args.sweep_at):
        variants += [("eval_cld", "CLD", "filtered", {"q": q}, f" (q={q:g})") for q in SWEEP_Q]
    variants += [(base, base, rule, None, "") for rule in RULES]
    only = st.args.only
    for score, label, rule, params, note in variants:
        if only and f"{label} {rule}{note}" not in only:
            continue
        try:
            idx, used, keep = rule_coreset(p, score, rule, f, params=params)
        except ValueError as exc:  # e.g. a quota above the class's scored samples
            print(f"[rules] {setting} {label} {rule}{note} f={f:g}: skipped ({exc})", flush=True)
            continue
        own = METHODS["cld" if score == "eval_cld" else score].order
        tag = (f"{label}-{rule}{'' if keep == own else '-' + keep}-f{f:g}"
               + "".join(f"-{k}{v:g}" for k, v in (params or {}).items()))
        flip = float(np.isin(idx, p["train_idx"][p["flipped"]]).mean()) if p["flipped"].any() else 0.0
        # A baseline's scores do not depend on V (the proxy's training is the same with a
        # curated or a noisy V): one set of its cells serves both V variants.
        where = setting if score == "eval_cld" else data
        out[f"{label} {rule}{note}"] = {"accs": st.accs(where, tag, idx), "params": used,
                                        "flipped": flip}


def ms(xs: list[float]) -> str:
    return fid.ms(xs)


def paired(xs: list[float], ys: list[float]) -> tuple[float, float]:
    d = [a - b for a, b in zip(xs, ys)]
    return statistics.mean(d), (statistics.stdev(d) if len(d) > 1 else float("nan"))


def report(R: dict, st: RulesStudy, minutes: float) -> str:
    out = [f"{st.args.n} training images per class (10 % of them V), proxy {st.args.proxy_epochs} "
           f"epochs (eval-mode CLD, seed 0), retraining {st.args.retrain_epochs} epochs x "
           f"{st.args.seeds} seeds, test on {len(st.full.test_targets)} images; accuracy % mean ± "
           "std over seeds; gain = paired difference against random (same seeds), mean ± std. "
           f"Automatic parameters from the training scores and the budget only. This run: "
           f"{minutes:.0f} min of cells (cached cells are reused).", ""]
    wins = []
    for setting, cell in R.items():
        for f, res in sorted(cell["fractions"].items()):
            rand = res["random"]
            rows = [["random", ms(rand), "", "", ""]]
            if "oracle" in res:
                g = paired(res["oracle"], rand)
                rows.append(["oracle (random among clean)", ms(res["oracle"]),
                             f"{g[0]:+.2f} ± {g[1]:.2f}", "0 %", ""])
            for name, r in res.items():
                if name in ("random", "oracle"):
                    continue
                g = paired(r["accs"], rand)
                params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in r["params"].items())
                rows.append([name, ms(r["accs"]), f"{g[0]:+.2f} ± {g[1]:.2f}",
                             f"{100 * r['flipped']:.1f} %", params])
                spread = max(statistics.stdev(rand) if len(rand) > 1 else 0.0,
                             statistics.stdev(r["accs"]) if len(r["accs"]) > 1 else 0.0)
                if len(rand) > 1 and g[0] > 2 * spread:
                    wins.append(f"{setting} at {100 * f:g} %: {name} ({g[0]:+.2f} points, "
                                f"seed spread {spread:.2f})")
            out += [f"**{setting}, {100 * f:g} %** (best baseline: {cell['baseline']})", "",
                    markdown_table(["coreset", "accuracy", "gain vs random", "flipped share",
                                    "parameters"], rows), ""]
    out.insert(2, "Rules beating random by more than twice the larger seed spread: "
               + ("; ".join(wins) if wins else "none in the cells measured") + ".\n")
    out.insert(3, summary(R) + "\n")
    return "\n".join(out)


def summary(R: dict) -> str:
    """One row per setting and budget: random, the oracle, top-CLD, the best CLD rule with
    automatic parameters and the best rule over the baseline (by mean gain over random)."""
    rows = []
    for setting, cell in R.items():
        for f, res in sorted(cell["fractions"].items()):
            rand = res["random"]

            def show(name: str) -> str:
                g = paired(res[name]["accs"], rand)
                return f"{name}: {ms(res[name]['accs'])} ({g[0]:+.2f} ± {g[1]:.2f})"

            def best(prefix: str) -> str:
                names = [n for n in res if n.startswith(prefix) and "(q" not in n
                         and n != "CLD top"]  # the sweep rows are not automatic choices
                return show(max(names, key=lambda n: statistics.mean(res[n]["accs"]))) if names else ""

            oracle = (f"{ms(res['oracle'])} ({paired(res['oracle'], rand)[0]:+.2f})"
                      if "oracle" in res else "")
            rows.append([setting, f"{100 * f:g} %", ms(rand), oracle,
                         show("CLD top") if "CLD top" in res else "", best("CLD "),
                         best(cell["baseline"] + " ")])
    return ("Summary (accuracy %, mean ± std over seeds; in brackets the paired gain over "
            "random): \n\n" + markdown_table(["setting", "budget", "random", "oracle",
                                               "top-CLD (the paper's rule)",
                                               "best CLD rule (automatic parameters)",
                                               "best rule over the best baseline"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from: "
                    + ", ".join(SETTINGS))
    ap.add_argument("--fractions", default="0.1,0.3,0.05,0.5,0.01", help="budgets, run in this order")
    ap.add_argument("--n", type=int, default=1000, help="training images per class (default: %(default)s)")
    ap.add_argument("--proxy-epochs", type=int, default=20, help="default: %(default)s")
    ap.add_argument("--retrain-epochs", type=int, default=20, help="default: %(default)s")
    ap.add_argument("--seeds", type=int, default=3, help="retraining seeds (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    ap.add_argument("--work", help="cell cache (default: benchmarks/_work/rules; --smoke: a temporary folder)")
    ap.add_argument("--test-subset", type=int, default=0, help="first N test images only (0: all)")
    ap.add_argument("--sweep-at", default="0.1", help="budgets with the fixed-q sweep of CLD's "
                    "filtered rule (default: %(default)s)")
    ap.add_argument("--only", default="", help="comma-separated coreset names to run (e.g. "
                    "'oracle,CLD top,CLD filtered,aum ccs'); random always runs; default: all")
    ap.add_argument("--full", action="store_true", help="the whole training split (6,000 images "
                    "per class) instead of the 1,000 per class subset; its own cache "
                    "(benchmarks/_work/rules-full) and RESULTS section")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for testing the script")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.proxy_epochs, args.retrain_epochs, args.seeds = 40, 4, 1, 2
        args.fractions, args.settings = "0.5", "noise20-cv,clean"
        args.test_subset = args.test_subset or 300
        if args.work is None:
            import tempfile

            args.work = tempfile.mkdtemp(prefix="cldfast-rules-smoke-")
    if args.full:
        args.n = 6000
    args.work = args.work or str(HERE / "_work" / ("rules-full" if args.full else "rules"))
    args.sweep_at = [float(x) for x in args.sweep_at.split(",") if x.strip()]
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    args.n_small = args.n
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        ap.error(f"--settings: unknown {bad}; expected some of {', '.join(SETTINGS)}")
    fractions = [float(x) for x in args.fractions.split(",")]
    torch.set_num_threads(args.threads)
    st = RulesStudy(args)
    R: dict[str, Any] = {}
    t0 = time.perf_counter()
    for f in fractions:
        for setting in settings:
            run_budget(st, setting, f, R)
            body = report(R, st, (time.perf_counter() - t0) / 60)
            if not args.no_write:
                if args.full:
                    write_section("rules-full", "Selection rules on the full training split",
                                  "python benchmarks/bench_rules.py --full", body,
                                  Path(args.results))
                else:
                    write_section("rules", "Selection rules: which coreset beats random?",
                                  "python benchmarks/bench_rules.py", body, Path(args.results))
    print(report(R, st, (time.perf_counter() - t0) / 60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
