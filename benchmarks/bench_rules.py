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
hours of CPU; budgets run in the order given (``--fractions``), settings in ``--settings``;
``--only`` restricts the new cells to some coresets (cached ones are always reported) and
``--sweep-at`` chooses the budgets of the fixed-q sweep. ``--full`` runs chosen cells on the
whole training split (its own cache and section).

Diagnostics (``--diagnostics SETTINGS``, cached, shown in every later report): for random,
top-CLD and the best rules at 10 %, coverage of each class in the proxy's feature space (mean
distance to the nearest selected sample, k-center radius), the epoch the selected samples
are learned, the retrained model's per-class accuracy; and how much of CLD comes from early
training (Spearman of CLD with the first-epoch loss drop; CLD with the first K epochs left
out, as ``--track-from K`` computes it, and its top-CLD coresets retrained).

    python benchmarks/bench_rules.py                              # all, writes 'rules'
    python benchmarks/bench_rules.py --fractions 0.1,0.3 --settings noise20-cv,clean
    python benchmarks/bench_rules.py --diagnostics noise20-cv,clean
    python benchmarks/bench_rules.py --full --settings noise20-cv --fractions 0.1,0.3 \
        --only "oracle,CLD top,CLD filtered,aum ccs"
    python benchmarks/bench_rules.py --smoke --no-write
"""

from __future__ import annotations

import argparse
import json
import os
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

from cldfast.core.offline import cld_from_trajectories  # noqa: E402
from cldfast.data import split_train_val  # noqa: E402
from cldfast.selection import (METHODS, RULES, auto_params, estimate_noise_rate,  # noqa: E402
                               select_by_rule)

SETTINGS = ("noise20-cv", "noise20", "clean", "noise40-cv", "noise40")
BASELINES = ("aum", "forgetting", "el2n")
SWEEP_Q = (0.1, 0.2, 0.3, 0.4)  # CLD's filtered rule at fixed shares dropped per class


class Missing(Exception):
    """A cell that is not cached, under ``--cached-only``."""


class RulesStudy(fid.Study):
    """The fidelity study's data and cell cache, with label noise at any rate and a clean V."""

    def proxy(self, setting: str, epochs: int, seed: int, schedule: str = "multistep") -> dict:
        if self.args.cached_only and not (self.work / "proxy" / f"{setting}-{schedule}-e{epochs}-s{seed}.npz").exists():
            raise Missing(setting)
        return super().proxy(setting, epochs, seed, schedule)

    def retrain(self, setting: str, tag: str, idx: np.ndarray, seed: int, epochs: int) -> dict:
        if self.args.cached_only and not (self.work / "retrain" / f"{setting}-{tag}-s{seed}-e{epochs}.json").exists():
            raise Missing(tag)
        return super().retrain(setting, tag, idx, seed, epochs)

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
    """Every coreset of ``setting`` at budget ``f`` into ``R`` (cells computed or cached)."""
    try:
        _run_budget(st, setting, f, R)
    except Missing:  # --cached-only: no proxy or no random cells yet
        R.get(setting, {}).get("fractions", {}).pop(f, None)
    fractions = R.get(setting, {}).get("fractions", {})
    if len(fractions.get(f, {})) == 1:  # --cached-only: random alone, nothing to compare
        fractions.pop(f)


def _run_budget(st: RulesStudy, setting: str, f: float, R: dict) -> None:
    p = st.proxy(setting, st.args.proxy_epochs, 0)
    base = best_baseline(p)
    cell = R.setdefault(setting, {"baseline": base, "fractions": {}}).setdefault("fractions", {})
    out = cell.setdefault(f, {})
    # Random and oracle coresets ignore V: one set of cells serves both V variants.
    data = setting.removesuffix("-cv")
    out["random"] = st.random_accs(data, p, f)
    if p["flipped"].any() and (not st.args.only or "oracle" in st.args.only):
        clean = np.where(p["flipped"], np.nan, 0.0)  # NaN: never picked
        try:
            out["oracle"] = [st.retrain(data, f"oracle-f{f:g}-d{s}",
                                        st.coreset(p, clean, f, "random", seed=s), s,
                                        st.args.retrain_epochs)["accuracy"]
                             for s in st.retrain_seeds]
        except Missing:
            pass
    # CLD's filtered rule with its q from the best baseline's noise estimate, and a sweep.
    q_base = estimate_noise_rate(p[base], keep=METHODS[base].rule_keep)
    variants = [("eval_cld", "CLD", rule, None, "") for rule in RULES]
    variants += [("eval_cld", "CLD", "filtered", {"q": round(q_base, 4)}, f" (q from {base})")]
    if any(abs(f - s) < 1e-12 for s in st.args.sweep_at):
        variants += [("eval_cld", "CLD", "filtered", {"q": q}, f" (q={q:g})") for q in SWEEP_Q]
    variants += [(base, base, rule, None, "") for rule in RULES]
    only = st.args.only
    for score, label, rule, params, note in variants:
        skip = bool(only) and f"{label} {rule}{note}" not in only  # unless its cells are cached
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
        if skip and not all((st.work / "retrain" / f"{where}-{tag}-s{s}-e{st.args.retrain_epochs}.json")
                            .exists() for s in st.retrain_seeds):
            continue
        try:
            out[f"{label} {rule}{note}"] = {"accs": st.accs(where, tag, idx), "params": used,
                                            "flipped": flip}
        except Missing:
            continue


# ------------------------------------------------------------------ diagnostics
DIAG_FROM = (1, 2, 5, 10)  # CLD with the first K epochs left out (``--track-from K``)


def proxy_features(st: RulesStudy, setting: str) -> np.ndarray:
    """Penultimate embeddings [N, D] of the training split under the setting's final proxy,
    cached. The proxy is trained again with the cached run's recipe and eval-mode tracking;
    its CLD must equal the cached one (the same model), else the features are refused."""
    path = st.work / "features" / f"{setting}.npy"
    if path.exists():
        return np.load(path)
    from cldfast import CLDTracker
    from cldfast.scores.final import embed_and_grand
    from cldfast.training import Recipe, Tracking, fit

    E = st.args.proxy_epochs
    p = st.proxy(setting, E, 0)
    bundle, train_idx, val_idx, _ = st.setting(setting)
    tracker = CLDTracker(p["labels"], p["val_labels"], num_classes=bundle.num_classes)
    print(f"[rules] proxy features {setting}: training the proxy again", flush=True)
    res = fit(bundle, train_idx, "small-cnn", Recipe(epochs=E, device="cpu", seed=0),
              tracking=Tracking(tracker, "eval", val_idx, list(range(E))), evaluate_test=False,
              progress=False, desc="proxy")
    again = tracker.scores().double().numpy()
    if not np.allclose(again, p["eval_cld"], rtol=0, atol=1e-6, equal_nan=True):
        raise RuntimeError(f"{setting}: the proxy trained again differs from the cached one "
                           f"(max |dCLD| {np.nanmax(np.abs(again - p['eval_cld'])):.2e})")
    _, emb = embed_and_grand(res.model, bundle.train_eval, train_idx, p["labels"])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), emb)
    os.replace(path.with_suffix(".tmp.npy"), path)
    return emb


def coverage(emb: np.ndarray, labels: np.ndarray, picked: np.ndarray) -> tuple[float, float]:
    """Mean over classes of (mean, max) distance from a class member to its nearest selected
    member of the class (the max is the k-center radius), in the proxy's feature space."""
    means, radii = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        sel = members[np.isin(members, picked)]
        d = torch.cdist(torch.from_numpy(emb[members]), torch.from_numpy(emb[sel])).min(1).values
        means.append(float(d.mean()))
        radii.append(float(d.max()))
    return float(np.mean(means)), float(np.mean(radii))


def per_class_accuracy(st: RulesStudy, setting: str, tag: str, idx: np.ndarray, seed: int) -> list[float]:
    """Test accuracy per class (%) of the retraining cell ``tag`` (trained again, cached; its
    overall accuracy must equal the cached cell's)."""
    E = st.args.retrain_epochs
    key = f"{setting}-{tag}-s{seed}-e{E}"
    path = st.work / "perclass" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    from cldfast.training import Recipe, fit, predict

    bundle = st.setting(setting)[0]
    cached = st.retrain(setting, tag, idx, seed, E)["accuracy"]
    print(f"[rules] per-class accuracy {key}", flush=True)
    res = fit(bundle, np.sort(idx), "small-cnn", Recipe(epochs=E, device="cpu", seed=seed),
              evaluate_test=False, progress=False, desc="retrain")
    test_idx = np.arange(len(bundle.test_targets))
    recipe = Recipe(device="cpu")
    _, correct = predict(res.model, bundle.test, test_idx, recipe, torch.device("cpu"), progress=False)
    correct = correct.numpy()
    if abs(100 * correct.mean() - cached) > 0.02:
        print(f"[rules] WARNING {key}: retrained again {100 * correct.mean():.2f} % vs cached "
              f"{cached:.2f} %", flush=True)
    out = [float(100 * correct[bundle.test_targets == c].mean()) for c in range(bundle.num_classes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(out))
    os.replace(path.with_suffix(".tmp"), path)
    return out


def diagnostics(st: RulesStudy, setting: str, f: float = 0.1) -> dict[str, Any]:
    """Why top-CLD loses, at budget ``f``: coverage, per-class accuracy and learned epoch of
    top-CLD, random and the best rules; how much of CLD comes from the first differences."""
    p = st.proxy(setting, st.args.proxy_epochs, 0)
    data = setting.removesuffix("-cv")
    base = best_baseline(p)
    L, V, y = p["eval_losses"], p["val_losses"], p["labels"]
    emb = proxy_features(st, setting)
    learned = fid.first_learned(L)
    T = L.shape[0]
    coresets = {"random": (data, f"random-f{f:g}-d0", st.coreset(p, np.zeros(y.size), f, "random", seed=0))}
    for score, label, rule in (("eval_cld", "CLD", "top"), ("eval_cld", "CLD", "ccs"),
                               ("eval_cld", "CLD", "filtered"), (base, base, "ccs")):
        idx, params, keep = rule_coreset(p, score, rule, f)
        own = METHODS["cld" if score == "eval_cld" else score].order
        tag = f"{label}-{rule}{'' if keep == own else '-' + keep}-f{f:g}"
        coresets[f"{label} {rule}"] = (setting if score == "eval_cld" else data, tag, idx)
    rows = {}
    for name, (where, tag, idx) in coresets.items():
        pos = np.searchsorted(p["train_idx"], idx)
        mean_d, radius = coverage(emb, y, pos)
        pcs = [per_class_accuracy(st, where, tag, idx, 0)]
        rows[name] = {"mean_distance": mean_d, "radius": radius,
                      "learned_median": float(np.median(learned[pos])),
                      "never_learned": float((learned[pos] > T).mean()),
                      "flipped": float(p["flipped"][pos].mean()),
                      "per_class": np.mean(pcs, 0).tolist()}
    # How much of CLD comes from early training.
    cld = p["eval_cld"]
    drop1 = L[0] - L[1]
    later = {}
    for k in (k for k in DIAG_FROM if k <= T - 3):  # at least 3 checkpoints left
        c_k = cld_from_trajectories(L[k:], V[k:], y, p["val_labels"], num_classes=10)
        later[k] = {"spearman_with_cld": fid.within_class_spearman(c_k, cld, y),
                    "auroc_flipped_low": (fid.auroc(-c_k, p["flipped"]) if p["flipped"].any()
                                          else float("nan"))}
        if k in (2, 5):
            idx = st.coreset(p, c_k, f, "top")
            accs = st.accs(setting, f"CLD-from{k}-top-f{f:g}", idx)
            later[k]["top_accs"] = accs
            later[k]["flipped_top"] = float(p["flipped"][np.searchsorted(p["train_idx"], idx)].mean())
    return {"setting": setting, "fraction": f, "coresets": rows, "from": later,
            "spearman_first_drop": fid.within_class_spearman(cld, drop1, y),
            "spearman_total_drop": fid.within_class_spearman(cld, L[0] - L[-1], y),
            "auroc_flipped_low": fid.auroc(-cld, p["flipped"]) if p["flipped"].any() else float("nan"),
            "random_accs": st.random_accs(data, p, f)}


def diagnostics_report(D: list[dict[str, Any]]) -> str:
    out = ["### Why top-CLD loses (diagnostics)", ""]
    for d in D:
        rows = []
        rand_pc = np.asarray(d["coresets"]["random"]["per_class"])
        for name, r in d["coresets"].items():
            pc = np.asarray(r["per_class"])
            worst = np.argsort(pc - rand_pc)[:2]
            lost = ", ".join(f"{int(c)}: {pc[c] - rand_pc[c]:+.1f}" for c in worst) if name != "random" else ""
            rows.append([name, f"{r['mean_distance']:.3f}", f"{r['radius']:.3f}",
                         f"{r['learned_median']:g}", f"{100 * r['never_learned']:.1f} %",
                         f"{100 * r['flipped']:.1f} %", f"{pc.mean():.1f}", lost])
        out += [f"**{d['setting']}, {100 * d['fraction']:g} %** (seed 0 coresets; features: the "
                "proxy's penultimate layer; learned epoch: first checkpoint from which the eval "
                "loss stays below ln 2 with the given label; per-class accuracy of the retrained "
                "model, seed 0)", "",
                markdown_table(["coreset", "mean distance to nearest selected", "k-center radius",
                                "median learned epoch", "never learned", "flipped",
                                "per-class accuracy mean", "classes lost most vs random (points)"],
                               rows), ""]
        rows = [["all (the paper's)", "1.000", _auc(d["auroc_flipped_low"]), "", ""]]
        for k, r in d["from"].items():
            g = paired(r["top_accs"], d["random_accs"]) if "top_accs" in r else None
            rows.append([f"from epoch {int(k) + 1} (--track-from {k})", f"{r['spearman_with_cld']:.3f}",
                         _auc(r["auroc_flipped_low"]),
                         f"{ms(r['top_accs'])} ({g[0]:+.2f} ± {g[1]:.2f})" if g else "",
                         f"{100 * r['flipped_top']:.1f} %" if "flipped_top" in r else ""])
        out += [f"Within-class Spearman of CLD with the first-epoch loss drop (eval loss after "
                f"epoch 1 minus after epoch 2): {d['spearman_first_drop']:.3f}; with the whole "
                f"drop (epoch 1 minus the last): {d['spearman_total_drop']:.3f}.", "",
                markdown_table(["checkpoints", "Spearman with CLD (within class)",
                                "AUROC (flipped = low CLD)", "top-CLD coreset accuracy (gain vs random)",
                                "flipped in it"], rows), ""]
    return "\n".join(out)


def _auc(x: float) -> str:
    return "" if x != x else f"{x:.3f}"


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
    diag = [json.loads(q.read_text()) for q in sorted((st.work / "diagnostics").glob("*.json"))]
    if diag:
        out += [diagnostics_report(diag), ""]
    out.insert(2, "Rules beating random by more than twice the larger seed spread: "
               + ("; ".join(wins) if wins else "none in the cells measured") + ".\n")
    out.insert(3, summary(R) + "\n")
    out.insert(4, gains_grid(R) + "\n")
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


LABELS = {"noise20-cv": "20 % flipped, curated V", "noise20": "20 % flipped, noisy V",
          "clean": "clean", "noise40-cv": "40 % flipped, curated V",
          "noise40": "40 % flipped, noisy V"}


def readme_table(R: dict) -> str:
    """The README's summary: per setting and budget, random's accuracy and the paired gain
    over it of the oracle, top-CLD, the best CLD rule (automatic parameters) and the two
    best rules over the baseline."""
    rows = []
    for setting, cell in R.items():
        base = cell["baseline"]
        for f, res in sorted(cell["fractions"].items()):
            rand = res["random"]

            def gain(name: str, label: str = "") -> str:
                r = res.get(name)
                if r is None:
                    return ""
                g = paired(r if name == "oracle" else r["accs"], rand)
                return f"{label}{g[0]:+.2f} ± {g[1]:.2f}"

            cld = [n for n in res if n.startswith("CLD ") and "(q" not in n and n != "CLD top"]
            best = max(cld, key=lambda n: statistics.mean(res[n]["accs"])) if cld else None
            rows.append([LABELS.get(setting, setting), f"{100 * f:g} %", ms(rand), gain("oracle"),
                         gain("CLD top"), gain(best, best[4:] + ": ") if best else "",
                         gain(f"{base} ccs"), gain(f"{base} filtered")])
    return markdown_table(["setting", "budget", "random (accuracy %)", "oracle", "top-CLD (the paper's)",
                           "best CLD rule", "ccs over AUM", "filtered over AUM"], rows)


def gains_grid(R: dict) -> str:
    """Rule x setting x budget: random's accuracy and every coreset's paired gain over it."""
    names: list[str] = []
    for cell in R.values():
        for res in cell["fractions"].values():
            names += [n for n in res if n != "random" and "(q=" not in n and n not in names]
    names.sort(key=lambda n: (n != "oracle", not n.startswith("CLD"), n != "CLD top", n))
    rows = []
    for setting, cell in R.items():
        for f, res in sorted(cell["fractions"].items()):
            rand = res["random"]
            row = [setting, f"{100 * f:g} %", ms(rand)]
            for n in names:
                r = res.get(n)
                accs = r if n == "oracle" or r is None else r["accs"]
                g = paired(accs, rand) if accs else None
                row.append(f"{g[0]:+.2f} ± {g[1]:.2f}" if g else "")
            rows.append(row)
    return ("Every rule, paired gain over random (accuracy points, mean ± std over the seeds; "
            "automatic parameters):\n\n" + markdown_table(["setting", "budget", "random"] + names, rows))


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
    ap.add_argument("--diagnostics", default="", metavar="SETTINGS",
                    help="compute the diagnostics of 'why top-CLD loses' at 10 %% for these "
                         "settings (comma-separated; cached in --work/diagnostics, shown in the "
                         "report of every later run) instead of the grid")
    ap.add_argument("--cached-only", action="store_true", help="report the cached cells only; "
                    "compute nothing")
    ap.add_argument("--readme", action="store_true", help="print the README's summary table "
                    "(with --cached-only: of the cached cells)")
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
    if args.smoke:  # the grid, then the diagnostics on its data and budget
        run_diagnostics(st, ["noise20-cv"], fractions[0])
    elif args.diagnostics:
        run_diagnostics(st, [x.strip() for x in args.diagnostics.split(",") if x.strip()], 0.1)
        return 0
    for f in fractions:
        for setting in settings:
            run_budget(st, setting, f, R)
            body = report(R, st, (time.perf_counter() - t0) / 60)
            if not args.no_write:
                name, title = (("rules-full", "Selection rules on the full training split")
                               if args.full else
                               ("rules", "Selection rules: which coreset beats random?"))
                write_section(name, title, "python benchmarks/bench_rules.py"
                              + (" --full" if args.full else ""), body, Path(args.results))
    print(readme_table(R) if args.readme else report(R, st, (time.perf_counter() - t0) / 60))
    return 0


def run_diagnostics(st: RulesStudy, settings: list[str], f: float) -> None:
    """Compute and cache the diagnostics of each setting at budget ``f``, and print them."""
    for setting in settings:
        d = diagnostics(st, setting, f)
        path = st.work / "diagnostics" / f"{setting}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(d))
        os.replace(path.with_suffix(".tmp"), path)
        print(diagnostics_report([d]), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
