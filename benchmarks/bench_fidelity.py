"""When does CLD work? A fidelity study of the two estimators on the embedded Fashion-MNIST.

Every proxy run is one :func:`cldfast.training.fit` with eval-mode tracking (the paper's
estimator, cldfast's default) whose tracker also keeps the full eval-mode trajectories of
the run ([T, N] training losses, [T, Q] validation losses, float32), and a second tracker
fed by the training pass's own losses (train mode, the approximation) against the same
per-class validation trajectory; AUM, forgetting and EL2N (cldfast.scores) are recorded
from the same training logits. Checkpoint subsampling is then replayed from the stored
trajectories (tests/training/test_eval_pass.py checks that tracking at subsampled checkpoints
equals this replay). Coresets are retrained from scratch (small CNN, SGD, multistep,
``--retrain-epochs`` epochs unless said otherwise) over several seeds and tested on the full
10,000-image test split. Everything is mean ± std (sample std) over seeds.

To fit a 2-core CPU, the training data is a seeded class-balanced subset of the 60,000
training images (``--n`` per class, 10 % of it held out per class as the validation split V
that CLD correlates with); the proxy and the retrained model are the small CNN.

Parts (``--parts``, run in this order, each adds cells; cells are cached in ``--work`` and a
re-run skips them; the RESULTS.md section is rewritten from all cached cells after every
part):

  noise      20 % of the subset's labels flipped (symmetric, seeded; V is noisy too): AUROC
             of low CLD for the flipped samples (both estimators) beside AUM, forgetting
             and EL2N; flipped share of the top / bottom coresets; retrained accuracy.
  subsample  eval-mode CLD of one run tracked every 1 / 2 / 4 epochs and over the first half
             of the epochs only: agreement with every-epoch scores, retrained accuracy.
  length     proxy lengths (each a full multistep schedule) x both estimators: seed-to-seed
             Spearman; top / near-zero / most-negative / random 10 % (the paper's Fig. 1);
             eval-mode CLD vs random at 5 / 10 / 30 / 50 / 70 %.
  schedule   multistep vs cosine vs one-cycle proxies at equal epochs; per-class validation
             trajectories (plot) and what top-CLD selects (first epoch learned, mean loss).
  harder     fewer samples per class (``--n-small``), same protocol.
  budget     coreset retraining at equal epochs vs equal optimizer steps.

    python benchmarks/bench_fidelity.py                      # all parts, writes 'fidelity'
    python benchmarks/bench_fidelity.py --parts noise        # one part (cells are reused)
    python benchmarks/bench_fidelity.py --report-only        # rewrite the section from cells
    python benchmarks/bench_fidelity.py --smoke --no-write --work /tmp/fid
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (auroc, first_learned, first_items, ms, read_npz, relabeled,  # noqa: E402,F401
                     set_threads, spearman, within_class_spearman, write_npz, write_text)
from _results import RESULTS, markdown_table, write_section  # noqa: E402

from cldfast import CLDTracker, cld_from_trajectories  # noqa: E402
from cldfast.data import load_dataset, split_train_val  # noqa: E402
from cldfast.scores import AUMRecorder, EL2NRecorder, ForgettingRecorder  # noqa: E402
from cldfast.scores.trajectory import TrajectoryTracker  # noqa: E402
from cldfast.selection import select_by_order  # noqa: E402
from cldfast.training import Recipe, Tracking, fit  # noqa: E402

PARTS = ("noise", "subsample", "length", "schedule", "harder", "budget")
NUM_CLASSES = 10  # Fashion-MNIST (the smoke run: digits)
# Also imported by bench_rules.py from here: Study, relabeled, ms, auroc, first_learned,
# spearman, within_class_spearman (the last five live in _common).


# ------------------------------------------------------------------ recorders
class TrainLossRecorder:
    """Train-mode CLD inside an eval-mode run: records every training batch's per-sample
    cross-entropy into its own tracker, and closes each epoch against the per-class
    validation means the eval-mode tracker recorded for that epoch (recorders' epoch ends
    run after the tracked epoch is closed, see cldfast.training.callbacks)."""

    def __init__(self, labels: np.ndarray, num_classes: int, eval_tracker: CLDTracker):
        # One "validation sample" per class, whose loss is that class's mean validation loss.
        self.tracker = CLDTracker(labels, np.arange(num_classes), num_classes=num_classes)
        self.eval_tracker = eval_tracker

    def on_batch(self, positions, logits, targets, epoch: int) -> None:
        self.tracker.record(positions, F.cross_entropy(logits.float(), targets, reduction="none"))

    def on_epoch_end(self, epoch: int) -> None:
        self.tracker.record_validation(self.eval_tracker.val_trajectory[-1])
        self.tracker.end_epoch()

    def score_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# ------------------------------------------------------------------ study
class Study:
    """The study's data settings and its cell cache: proxy runs (.npz) and retrainings
    (.json) under ``args.work``, each computed once."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        (self.work / "proxy").mkdir(parents=True, exist_ok=True)
        (self.work / "retrain").mkdir(parents=True, exist_ok=True)
        # The smoke run (CI) takes the embedded data as installed: digits without Debian's
        # dataset-fashion-mnist package; the study itself is of Fashion-MNIST.
        self.full = load_dataset("auto" if args.smoke else "fashion-mnist")
        if args.test_subset:
            self.full = first_items(self.full, test=args.test_subset)
        self._bundles: dict[str, Any] = {}
        self.retrain_seeds = list(range(args.seeds))

    # ---- data settings
    def setting(self, name: str):
        """(bundle, train_idx, val_idx, flipped [N] bool over the training split)."""
        if name in self._bundles:
            return self._bundles[name]
        a = self.args
        per_class = a.n_small if name == "small" else a.n
        rng = np.random.default_rng(1234)
        targets = self.full.train_targets
        chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(targets == c), per_class,
                                                    replace=False) for c in range(NUM_CLASSES)]))
        bundle = self.full
        noisy = targets.copy()
        if name == "noise20":
            rng_n = np.random.default_rng(2024)
            flip = rng_n.choice(chosen, int(round(0.2 * chosen.size)), replace=False)
            # symmetric: uniformly one of the 9 other classes
            noisy[flip] = (targets[flip] + rng_n.integers(1, NUM_CLASSES, flip.size)) % NUM_CLASSES
            bundle = relabeled(self.full, noisy, "noise20")
        sub_t, sub_v = split_train_val(noisy[chosen], 0.1, 0)
        train_idx, val_idx = chosen[sub_t], chosen[sub_v]
        flipped = noisy[train_idx] != targets[train_idx]
        self._bundles[name] = (bundle, train_idx, val_idx, flipped)
        return self._bundles[name]

    # ---- proxy cells
    def proxy(self, setting: str, epochs: int, seed: int, schedule: str = "multistep") -> dict:
        key = f"{setting}-{schedule}-e{epochs}-s{seed}"
        path = self.work / "proxy" / f"{key}.npz"
        if path.exists():
            return read_npz(path, json_keys=["meta"])
        out = self._run_proxy(setting, epochs, seed, schedule, key)
        write_npz(path, {**{k: v for k, v in out.items() if k != "meta"},
                         "meta": json.dumps(out["meta"])})
        return out

    def _run_proxy(self, setting: str, epochs: int, seed: int, schedule: str, key: str) -> dict:
        """One eval-mode proxy run: both estimators' CLD, the baselines, the trajectories."""
        bundle, train_idx, val_idx, flipped = self.setting(setting)
        labels, val_labels = bundle.train_targets[train_idx], bundle.train_targets[val_idx]
        n = train_idx.size
        tracker = TrajectoryTracker(labels, val_labels, num_classes=bundle.num_classes)
        train_rec = TrainLossRecorder(labels, bundle.num_classes, tracker)
        base = [ForgettingRecorder(n), AUMRecorder(n), EL2NRecorder(n, max(2, round(0.1 * epochs)))]
        recipe = Recipe(epochs=epochs, device="cpu", seed=seed, schedule=schedule)
        print(f"[fidelity] proxy {key}: {n} samples, {epochs} epochs", flush=True)
        t0 = time.perf_counter()
        res = fit(bundle, train_idx, "small-cnn", recipe,
                  tracking=Tracking(tracker, "eval", val_idx, list(range(epochs))),
                  evaluate_test=True, progress=False, desc="proxy", recorders=[train_rec, *base])
        seconds = time.perf_counter() - t0
        extra: dict[str, np.ndarray] = {}
        for r in base:
            extra.update(r.score_arrays())
        out = {"eval_losses": tracker.train_losses(), "val_losses": tracker.val_losses(),
               "eval_cld": tracker.scores().double().numpy(),
               "train_cld": train_rec.tracker.scores().double().numpy(),
               "aum": extra["aum"], "forgetting": extra["forgetting"], "el2n": extra["el2n"],
               "labels": labels, "val_labels": val_labels, "train_idx": train_idx,
               "val_idx": val_idx, "flipped": flipped,
               "lr": np.array([h["lr"] for h in res.history])}
        out["meta"] = {"seconds": seconds, "test_accuracy": res.test_accuracy,
                       "tracking_seconds": res.tracking_seconds}
        return out

    # ---- retraining cells
    def retrain(self, setting: str, tag: str, idx: np.ndarray, seed: int, epochs: int) -> dict:
        key = f"{setting}-{tag}-s{seed}-e{epochs}"
        path = self.work / "retrain" / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        bundle, train_idx, _, flipped = self.setting(setting)
        print(f"[fidelity] retrain {key}: {idx.size} samples", flush=True)
        t0 = time.perf_counter()
        res = fit(bundle, np.sort(idx), "small-cnn", Recipe(epochs=epochs, device="cpu", seed=seed),
                  evaluate_test=True, progress=False, desc="retrain")
        flip_share = float(np.isin(idx, train_idx[flipped]).mean()) if flipped.any() else 0.0
        out = {"key": key, "accuracy": 100 * res.test_accuracy, "samples": int(idx.size),
               "seconds": time.perf_counter() - t0, "flipped_share": flip_share}
        write_text(path, json.dumps(out))
        return out

    def accs(self, setting, tag, idx, epochs=None, seeds=None) -> list[float]:
        epochs = epochs or self.args.retrain_epochs
        return [self.retrain(setting, tag, idx, s, epochs)["accuracy"]
                for s in (self.retrain_seeds if seeds is None else seeds)]

    def coreset(self, p: dict, scores: np.ndarray, f: float, order: str = "top", seed: int = 0):
        return select_by_order(scores, p["labels"], fraction=f, order=order,
                               dataset_indices=p["train_idx"], seed=seed)

    def random_accs(self, setting, p, f, epochs=None) -> list[float]:
        """Random class-balanced coresets: a fresh draw per retraining seed."""
        epochs = epochs or self.args.retrain_epochs
        return [self.retrain(setting, f"random-f{f:g}-d{s}",
                             self.coreset(p, np.zeros(p["labels"].size), f, "random", seed=s), s,
                             epochs)["accuracy"] for s in self.retrain_seeds]


# ------------------------------------------------------------------ parts
def part_noise(st: Study, R: dict) -> None:
    a = st.args
    p0 = st.proxy("noise20", a.noise_epochs, 0)
    p1 = st.proxy("noise20", a.noise_epochs, 1)
    rows, acc_rows = [], []
    fl = p0["flipped"]
    for name, key, low in (("CLD, eval mode (default)", "eval_cld", True),
                           ("CLD, train mode", "train_cld", True), ("AUM", "aum", True),
                           ("forgetting events", "forgetting", False), ("EL2N", "el2n", False)):
        vals = [auroc(-p[key] if low else p[key], p["flipped"]) for p in (p0, p1)]
        share = []
        for f in (0.1, 0.3):
            order = "top" if key in ("eval_cld", "train_cld") else None
            if order is None:  # baselines: the keep-end of each (high AUM, low forgetting/EL2N)
                sc = p0[key] if key == "aum" else -p0[key]
            else:
                sc = p0[key]
            idx = st.coreset(p0, sc, f)
            share.append(100 * np.isin(idx, p0["train_idx"][fl]).mean())
        bottom = 100 * np.isin(st.coreset(p0, p0[key] if low else -p0[key], 0.1, "bottom"),
                               p0["train_idx"][fl]).mean()
        rows.append([name, f"{vals[0]:.3f} / {vals[1]:.3f}", f"{share[0]:.1f} %", f"{share[1]:.1f} %",
                     f"{bottom:.1f} %"])
    R["noise_detect"] = {"rows": rows, "base": 100 * fl.mean(), "epochs": a.noise_epochs,
                         "n": int(fl.size), "proxy_acc": [100 * p0["meta"]["test_accuracy"],
                                                          100 * p1["meta"]["test_accuracy"]]}
    for f in (0.1, 0.3):
        for name, key, order in (("CLD top, eval mode", "eval_cld", "top"),
                                 ("CLD top, train mode", "train_cld", "top"),
                                 ("AUM top (drops low-AUM samples)", "aum", "top")):
            idx = st.coreset(p0, p0[key], f, order)
            acc_rows.append([f"{f:g}", name, ms(st.accs("noise20", f"{key}-{order}-f{f:g}", idx)),
                             f"{100 * np.isin(idx, p0['train_idx'][fl]).mean():.1f} %"])
        acc_rows.append([f"{f:g}", "random, class-balanced", ms(st.random_accs("noise20", p0, f)),
                         f"{100 * fl.mean():.1f} % (expected)"])
    for order in ("zero", "bottom"):
        idx = st.coreset(p0, p0["eval_cld"], 0.1, order)
        acc_rows.append(["0.1", f"CLD {'near-zero' if order == 'zero' else 'most negative'}, eval mode",
                         ms(st.accs("noise20", f"eval_cld-{order}-f0.1", idx)),
                         f"{100 * np.isin(idx, p0['train_idx'][fl]).mean():.1f} %"])
    full = st.accs("noise20", "full", p0["train_idx"])
    R["noise_retrain"] = {"rows": acc_rows, "full": ms(full)}


def _variants(p: dict, T: int) -> dict[str, np.ndarray]:
    L, V = p["eval_losses"], p["val_losses"]
    out = {}
    for name, rows in (("every epoch", list(range(T))),
                       ("every 2nd epoch", list(range(T - 1, -1, -2))[::-1]),
                       ("every 4th epoch", list(range(T - 1, -1, -4))[::-1]),
                       ("first half, every epoch", list(range(T // 2)))):
        out[name] = (rows, cld_from_trajectories(L[rows], V[rows], p["labels"], p["val_labels"],
                                                 num_classes=NUM_CLASSES))
    return out


def part_subsample(st: Study, R: dict) -> None:
    T = st.args.sub_epochs
    p0, p1 = st.proxy("clean", T, 0), st.proxy("clean", T, 1)
    v0, v1 = _variants(p0, T), _variants(p1, T)
    check = float(np.nanmax(np.abs(v0["every epoch"][1] - p0["eval_cld"])))
    rows = []
    ref0 = v0["every epoch"][1]
    for name, (rows_used, s0) in v0.items():
        s1 = v1[name][1]
        top0 = st.coreset(p0, s0, 0.1)
        ref_top = st.coreset(p0, ref0, 0.1)
        accs = {f: st.accs("clean", f"sub-{name.replace(' ', '_')}-e{T}-f{f:g}",
                           st.coreset(p0, s0, f)) for f in (0.1, 0.3)}
        rows.append([name, len(rows_used), f"{spearman(s0, ref0):.3f}",
                     f"{100 * np.intersect1d(top0, ref_top).size / top0.size:.1f} %",
                     f"{spearman(s0, s1):.3f}", ms(accs[0.1]), ms(accs[0.3])])
    rnd = {f: ms(st.random_accs("clean", p0, f)) for f in (0.1, 0.3)}
    R["subsample"] = {"rows": rows, "T": T, "check": check, "random": rnd}


def part_length(st: Study, R: dict) -> None:
    a = st.args
    rows_sp, rows_fig1, rows_frac = [], [], []
    rnd10 = st.random_accs("clean", st.proxy("clean", a.lengths[0], 0), 0.1)
    for T in a.lengths:
        p0, p1 = st.proxy("clean", T, 0), st.proxy("clean", T, 1)
        labels = p0["labels"]
        for est in ("eval_cld", "train_cld"):
            rows_sp.append([T, "eval" if est == "eval_cld" else "train",
                            f"{spearman(p0[est], p1[est]):.3f}",
                            f"{within_class_spearman(p0[est], p1[est], labels):.3f}",
                            f"{100 * p0['meta']['test_accuracy']:.2f} / {100 * p1['meta']['test_accuracy']:.2f}"])
        rows_sp.append([T, "eval vs train (seed 0)", f"{spearman(p0['eval_cld'], p0['train_cld']):.3f}",
                        f"{within_class_spearman(p0['eval_cld'], p0['train_cld'], labels):.3f}", ""])
        for est in ("eval_cld", "train_cld"):
            cells = [ms(st.accs("clean", f"{est}-{order}-e{T}-f0.1", st.coreset(p0, p0[est], 0.1, order)))
                     for order in ("top", "zero", "bottom")]
            rows_fig1.append([T, "eval" if est == "eval_cld" else "train", *cells, ms(rnd10)])
    for f in a.fractions:
        rnd = st.random_accs("clean", st.proxy("clean", a.lengths[0], 0), f)
        row = [f"{f:g}"]
        for T in a.lengths:
            p0 = st.proxy("clean", T, 0)
            acc = st.accs("clean", f"eval_cld-top-e{T}-f{f:g}", st.coreset(p0, p0["eval_cld"], f))
            d = [x - y for x, y in zip(acc, rnd)]
            row.append(f"{ms(acc)} ({statistics.mean(d):+.2f})")
        row.append(ms(rnd))
        rows_frac.append(row)
    full = st.accs("clean", "full", st.proxy("clean", a.lengths[0], 0)["train_idx"])
    R["length"] = {"spearman": rows_sp, "fig1": rows_fig1, "frac": rows_frac, "full": ms(full),
                   "lengths": a.lengths}


def part_schedule(st: Study, R: dict) -> None:
    T = st.args.sub_epochs
    rows, char_rows = [], []
    traj = {}
    for sched in ("multistep", "cosine", "onecycle"):
        p = st.proxy("clean", T, 0, sched)
        s = p["eval_cld"]
        accs = {f: st.accs("clean", f"eval_cld-top-{sched}-e{T}-f{f:g}", st.coreset(p, s, f))
                for f in (0.1, 0.3)}
        rows.append([sched, f"{100 * p['meta']['test_accuracy']:.2f}", ms(accs[0.1]), ms(accs[0.3])])
        L = p["eval_losses"]
        learned = first_learned(L)
        pos = np.searchsorted(p["train_idx"], st.coreset(p, s, 0.1))
        rpos = np.searchsorted(p["train_idx"], st.coreset(p, np.zeros(s.size), 0.1, "random"))
        bpos = np.searchsorted(p["train_idx"], st.coreset(p, s, 0.1, "bottom"))
        for name, q in (("top-10 % CLD", pos), ("random 10 %", rpos), ("bottom-10 % CLD", bpos)):
            char_rows.append([sched, name, f"{learned[q].mean():.1f}",
                              f"{100 * (learned[q] > T).mean():.1f} %",
                              f"{L[-1, q].mean():.3f}", f"{L[:, q].mean():.3f}"])
        V = p["val_losses"]
        traj[sched] = (np.stack([V[:, p["val_labels"] == c].mean(1) for c in range(NUM_CLASSES)], 1),
                       p["lr"])
    rnd = {f: ms(st.random_accs("clean", st.proxy("clean", T, 0), f)) for f in (0.1, 0.3)}
    rows.append(["random (for reference)", "", rnd[0.1], rnd[0.3]])
    # The documented plot only from a real run: smoke runs and --no-write keep theirs in --work.
    keep_aside = st.args.no_write or st.args.smoke
    plot = (Path(st.args.work) if keep_aside else HERE.parent / "docs") / "fidelity_val_trajectories.png"
    try:
        _plot_trajectories(plot, traj, st.full.class_names)
        R["schedule_plot"] = "docs/fidelity_val_trajectories.png"
    except Exception as exc:  # noqa: BLE001 - a plot failure must not lose the numbers
        print(f"[fidelity] plot failed: {exc}", flush=True)
    R["schedule"] = {"rows": rows, "char": char_rows, "T": T}


def _plot_trajectories(path: Path, traj: dict, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(traj), figsize=(5 * len(traj), 3.8), sharey=True)
    for ax, (sched, (y, lr)) in zip(axes, traj.items()):
        for c in range(y.shape[1]):
            ax.plot(np.arange(1, y.shape[0] + 1), y[:, c], label=names[c], lw=1.2)
        ax.set_title(f"{sched} proxy")
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax2 = ax.twinx()
        ax2.plot(np.arange(1, lr.size + 1), lr, "k:", lw=1)
        ax2.set_yticks([])
    axes[0].set_ylabel("mean validation loss of the class (eval mode)")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Per-class validation trajectories (dotted: learning rate)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def part_harder(st: Study, R: dict) -> None:
    T = st.args.sub_epochs
    p0, p1 = st.proxy("small", T, 0), st.proxy("small", T, 1)
    rows = []
    for f in (0.1, 0.3):
        acc = st.accs("small", f"eval_cld-top-e{T}-f{f:g}", st.coreset(p0, p0["eval_cld"], f))
        rnd = st.random_accs("small", p0, f)
        rows.append([f"{f:g}", ms(acc), ms(rnd), f"{statistics.mean(acc) - statistics.mean(rnd):+.2f}"])
    full = st.accs("small", "full", p0["train_idx"])
    R["harder"] = {"rows": rows, "full": ms(full), "n": int(p0["labels"].size),
                   "spearman": spearman(p0["eval_cld"], p1["eval_cld"]), "T": T,
                   "proxy_acc": 100 * p0["meta"]["test_accuracy"]}


def part_budget(st: Study, R: dict) -> None:
    T = st.args.sub_epochs
    E = st.args.retrain_epochs
    p0 = st.proxy("clean", T, 0)
    rows = []
    for f in (0.1, 0.3):
        e_steps = int(round(E / f))
        cld = st.coreset(p0, p0["eval_cld"], f)
        for budget, epochs in (("equal epochs", E), ("equal steps", e_steps)):
            acc = st.accs("clean", f"eval_cld-top-e{T}-f{f:g}", cld, epochs=epochs)
            rnd = st.random_accs("clean", p0, f, epochs=epochs)
            rows.append([f"{f:g}", f"{budget} ({epochs} epochs)", ms(acc), ms(rnd),
                         f"{statistics.mean(acc) - statistics.mean(rnd):+.2f}"])
    R["budget"] = {"rows": rows, "T": T}


# ------------------------------------------------------------------ report
def _report_setup(st: Study, minutes: float) -> str:
    a = st.args
    return f"""\
**Setup.** A seeded class-balanced subset of the embedded Fashion-MNIST training images: \
{a.n} per class ({a.n_small} per class in the 'harder' part), of which 10 % per class is the \
validation split V (seed 0); proxy and retrained model: small-cnn; SGD lr 0.1, Nesterov, \
weight decay 5e-4, batch 128; multistep decays at 81/164 and 121/164 of the epochs unless \
said otherwise. Retraining: {a.retrain_epochs} epochs (same schedule shape), seeds \
0..{a.seeds - 1} (random coresets: a fresh class-balanced draw per seed), test accuracy on \
the {len(st.full.test_targets):,}-image test split, mean ± sample std over seeds. Coresets are class-balanced \
(`cldfast.selection.select_by_order`). Both estimators come from one proxy run: eval mode (the model \
in eval mode without augmentation over the training split after every epoch: the paper's CLD, \
cldfast's default) and train mode (the training pass's own losses). CPU, \
{a.threads} torch thread(s); cells are cached in `{a.work}`; {minutes:.1f} min of compute in this \
invocation. Commands: `{" ".join(a.command)}`.

**Reading it.** A difference smaller than the seed spread (the ± figures) is no difference."""


def _report_noise(st: Study, R: dict) -> list[str]:
    out = []
    if "noise_detect" in R:
        d = R["noise_detect"]
        out.append(f"""\
### Label noise: 20 % symmetric flips

{d['n']:,} training samples, {d['base']:.1f} % flipped; proxy {d['epochs']} epochs \
(test accuracy {d['proxy_acc'][0]:.2f} / {d['proxy_acc'][1]:.2f} %, seeds 0 / 1). AUROC: how well \
a low score (low CLD, low AUM) or a high one (forgetting, EL2N) flags the flipped samples; \
coresets keep each method's clean end (top CLD, top AUM, fewest forgetting events, lowest EL2N) \
from the seed-0 proxy.

{markdown_table(["score", "AUROC for flipped (proxy seed 0 / 1)", "flipped in kept 10 %", "flipped in kept 30 %", "flipped in the 10 % at the other end"], d['rows'])}
""")
    if "noise_retrain" in R:
        d = R["noise_retrain"]
        out.append(f"""\
Retrained on the coresets (noisy labels, as a user would have them); full noisy training \
split: {d['full']} %.

{markdown_table(["fraction", "coreset", "test accuracy %", "flipped in coreset"], d['rows'])}
""")
    return out


def _report_subsample(st: Study, R: dict) -> list[str]:
    if "subsample" not in R:
        return []
    d = R["subsample"]
    return [f"""\
### Checkpoint subsampling (eval mode, clean data, {d['T']}-epoch multistep proxy)

Scores replayed from the run's stored eval-mode trajectories (the replay of every epoch \
matches the run's streamed scores to {d['check']:.1e}). Every 2nd / 4th: counted back from the \
last epoch, as `--track-every` does. Random class-balanced coresets: 10 % {d['random'][0.1]}, \
30 % {d['random'][0.3]}.

{markdown_table(["checkpoints", "count", "Spearman vs every epoch", "top-10 % overlap with every epoch", "seed 0 vs seed 1 Spearman", "top 10 % acc.", "top 30 % acc."], d['rows'])}
"""]


def _report_length(st: Study, R: dict) -> list[str]:
    if "length" not in R:
        return []
    d = R["length"]
    return [f"""\
### Proxy length x estimator (clean data, each length a full multistep schedule)

Full training split: {d['full']} %.

{markdown_table(["proxy epochs", "estimator", "Spearman seed 0 vs 1", "within classes", "proxy test acc. (seed 0 / 1)"], d['spearman'])}

The paper's Fig. 1 on this data, 10 % class-balanced subsets (seed-0 proxy):

{markdown_table(["proxy epochs", "estimator", "top CLD", "near-zero CLD", "most negative CLD", "random"], d['fig1'])}

Eval-mode top-CLD vs random at several fractions (in brackets: mean CLD - random):

{markdown_table(["fraction", *[f"CLD, {T}-epoch proxy" for T in d['lengths']], "random"], d['frac'])}
"""]


def _report_schedule(st: Study, R: dict) -> list[str]:
    if "schedule" not in R:
        return []
    d = R["schedule"]
    plot = f"\n\n![per-class validation trajectories](../{R['schedule_plot']})" if "schedule_plot" in R else ""
    return [f"""\
### Schedule shape ({d['T']}-epoch proxies, eval mode, clean data)

{markdown_table(["proxy schedule", "proxy test acc. %", "top 10 % acc.", "top 30 % acc."], d['rows'])}

What the 10 % subsets hold (first learned: 1-based epoch from which the sample's eval loss \
stays below ln 2, i.e. it is classified correctly to the end; never = still not at the end):

{markdown_table(["proxy schedule", "subset", "mean first-learned epoch", "never learned", "mean final eval loss", "mean eval loss over the run"], d['char'])}{plot}
"""]


def _report_harder_budget(st: Study, R: dict) -> list[str]:
    out = []
    if "harder" in R:
        d = R["harder"]
        out.append(f"""\
### Harder: {d['n']:,} training samples ({st.args.n_small} per class before the split)

{d['T']}-epoch multistep proxy (test accuracy {d['proxy_acc']:.2f} %); eval-mode seed-to-seed \
Spearman {d['spearman']:.3f}; full training split {d['full']} %.

{markdown_table(["fraction", "CLD top (eval)", "random", "CLD - random"], d['rows'])}
""")
    if "budget" in R:
        d = R["budget"]
        out.append(f"""\
### Coreset training budget ({d['T']}-epoch proxy, eval mode, clean data)

{markdown_table(["fraction", "budget", "CLD top", "random", "CLD - random"], d['rows'])}
""")
    return out


def report(st: Study, R: dict, minutes: float) -> str:
    out = [_report_setup(st, minutes)]
    for part in (_report_noise, _report_subsample, _report_length, _report_schedule,
                 _report_harder_budget):
        out += part(st, R)
    missing = [p for p, k in (("noise", "noise_retrain"), ("subsample", "subsample"),
                              ("length", "length"), ("schedule", "schedule"), ("harder", "harder"),
                              ("budget", "budget")) if k not in R]
    if missing:
        out.append(f"Not yet run in this section: {', '.join(missing)}.")
    return "\n\n".join(out)


# ------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated, from: " + ", ".join(PARTS))
    ap.add_argument("--n", type=int, default=1000, help="training images per class (default: %(default)s)")
    ap.add_argument("--n-small", type=int, default=200, help="per class in 'harder' (default: %(default)s)")
    ap.add_argument("--lengths", default="10,30,60", help="proxy lengths (default: %(default)s)")
    ap.add_argument("--sub-epochs", type=int, default=30,
                    help="proxy epochs of subsample / schedule / harder / budget (default: %(default)s)")
    ap.add_argument("--noise-epochs", type=int, default=20, help="proxy epochs, noise (default: %(default)s)")
    ap.add_argument("--retrain-epochs", type=int, default=20, help="default: %(default)s")
    ap.add_argument("--fractions", default="0.05,0.1,0.3,0.5,0.7")
    ap.add_argument("--seeds", type=int, default=3, help="retraining seeds (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    ap.add_argument("--work", help="cell cache folder (default: benchmarks/_work/fidelity; "
                    "with --smoke a fresh temporary folder)")
    ap.add_argument("--test-subset", type=int, default=0, help="first N test images only (0: all)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the section from cells "
                    "(parts whose cells are missing would be computed: list only finished parts)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for testing the script")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    args.command = ["python", "benchmarks/bench_fidelity.py", *(sys.argv[1:] if argv is None else argv)]
    if args.smoke:
        args.n, args.n_small, args.lengths, args.sub_epochs = 40, 30, "3,4", 12
        args.noise_epochs, args.retrain_epochs, args.seeds, args.fractions = 4, 1, 2, "0.1,0.5"
        args.test_subset = args.test_subset or 300
        if args.work is None:
            import tempfile

            args.work = tempfile.mkdtemp(prefix="cldfast-fidelity-smoke-")
    if args.work is None:
        args.work = str(HERE / "_work" / "fidelity")
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.fractions = [float(x) for x in args.fractions.split(",")]
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in args.parts if p not in PARTS]
    if bad:
        ap.error(f"--parts: unknown {bad}; expected some of {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    st = Study(args)
    t0 = time.perf_counter()
    R: dict[str, Any] = {}
    funcs = {"noise": part_noise, "subsample": part_subsample, "length": part_length,
             "schedule": part_schedule, "harder": part_harder, "budget": part_budget}
    # Parts already finished in earlier invocations are re-reported from their cells first.
    done_file = Path(args.work) / "parts_done.json"
    done = json.loads(done_file.read_text()) if done_file.exists() else []
    for part in PARTS:
        if part in done and part not in args.parts:
            funcs[part](st, R)
    for part in args.parts:
        if args.report_only and part not in done:
            continue
        funcs[part](st, R)
        if part not in done:
            done.append(part)
            write_text(done_file, json.dumps(done))
        body = report(st, R, (time.perf_counter() - t0) / 60)
        if not args.no_write:
            write_section("fidelity", "Fidelity: when does CLD work? (eval vs train mode, noise, "
                          "proxy length, subsampling, schedule, difficulty, budget)",
                          "benchmarks/bench_fidelity.py", body, Path(args.results))
    print(report(st, R, (time.perf_counter() - t0) / 60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
