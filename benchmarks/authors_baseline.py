"""The authors' CLD pipeline, re-implemented faithfully, for side-by-side benchmarks.

Mirrors manishnagaraj/CLD_Coresets_from_Trajectories (the code behind Nagaraj et al., TMLR
2025; see ../shared/seeds for its README):

* ``get_loss_values.py`` + ``Utils/training_utils.py``: train for E epochs; after every
  epoch an eval-mode pass over the whole training split and one over the validation split
  (``get_train_validation_losses``), whose per-sample losses and labels are appended to
  per-epoch Python lists with ``list.extend(tensor.cpu().numpy())``, i.e. one numpy scalar
  object per sample per epoch; the dict of lists is pickled once training ends.
* ``Compute_CLD_scores.py``: unpickle, ``np.vstack`` the lists into [E, N] float64 arrays,
  ``np.diff`` over epochs, and per class: the mean validation loss of the class per epoch,
  its differences, and the Pearson correlation (population std, 0 for a zero std) of every
  training sample's differences with them; the per-class rankings are pickled.

What is deliberately the same as cldfast's loop, so that the three pipelines compared in
``bench_selection.py`` train the same model on the same data in the same order: the model,
data, validation split, seeds, shuffling, augmentation, optimiser and schedule come from
cldfast (``cldfast.training.Recipe``, ``cldfast.data``), and the training loss is the mean
of the per-sample cross-entropy (cldfast's loop; the authors' ``nn.CrossEntropyLoss()``
differs from it in the last bit, which would make the two runs drift apart). Deviations from
the authors' scripts, none of which slows the baseline down:

* device-agnostic (``.to(device)`` instead of ``.cuda()``), no ``DataParallel``;
* the per-epoch test-set evaluation and best-accuracy checkpointing are optional
  (``test_every_epoch``, off in the benchmarks: cldfast does neither, so they would only
  add time to the baseline); one test evaluation after training, as cldfast does;
* :func:`compute_cld_scores` also returns the scores themselves (the authors keep only the
  per-class orderings), so they can be compared with cldfast's.

The file is also importable on its own: ``python benchmarks/authors_baseline.py --help``
runs the baseline on the embedded data.
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from cldfast.data import DatasetBundle, IndexedSubset, make_loader
from cldfast.training import Recipe, build_model
from cldfast.training.seeding import epoch_seed, seed_everything

__all__ = ["get_train_validation_losses", "collect_losses", "compute_cld_scores",
           "simulate_stored_results", "CollectResult"]


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[torch.Tensor]:
    """The authors' top-k accuracy helper (Utils/training_utils.py)."""
    with torch.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)
        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / batch_size)
                for k in topk]


def _train_epoch(loader, model, optimizer, device, num_classes: int) -> tuple[float, float]:
    """One training epoch, structured like the authors' ``train_epoch`` (per-batch loss and
    top-1/top-5 bookkeeping with ``.item()``)."""
    model.train()
    loss_sum, top1_sum, count = 0.0, 0.0, 0
    topk = (1, min(5, num_classes))
    # A plain tqdm bar (disabled), like the authors' bar and cldfast's loop, so that both draw
    # the same shuffling order from the loader's seeded generator.
    for inputs, targets, _idx in tqdm(loader, disable=True):
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        outputs = model(inputs)
        # Per-sample CE then mean, as cldfast's loop (see the module docstring).
        loss = F.cross_entropy(outputs.float(), targets, reduction="none").mean()
        prec1, _prec5 = _accuracy(outputs, targets, topk=topk)
        loss_sum += loss.item() * inputs.size(0)
        top1_sum += prec1.item() * inputs.size(0)
        count += inputs.size(0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss_sum / max(count, 1), top1_sum / max(count, 1)


@torch.no_grad()
def _test_epoch(loader, model, device) -> tuple[float, float]:
    """The authors' ``test_epoch``: mean loss and top-1 accuracy in eval mode."""
    model.eval()
    criterion = nn.CrossEntropyLoss()
    loss_sum, correct, count = 0.0, 0, 0
    for batch in loader:
        inputs, targets = batch[0].to(device), batch[1].to(device)
        outputs = model(inputs)
        loss_sum += criterion(outputs, targets).item() * inputs.size(0)
        correct += int((outputs.argmax(1) == targets).sum())
        count += inputs.size(0)
    return loss_sum / max(count, 1), correct / max(count, 1)


def get_train_validation_losses(model, train_loader, validation_loader, device):
    """The authors' per-epoch loss collection, as written in get_loss_values.py: eval mode,
    per-sample CE, each batch appended to Python lists with ``list.extend`` of a numpy
    array (one numpy scalar object per sample)."""
    criterion_evaluating = nn.CrossEntropyLoss(reduction="none")
    model.eval()
    train_losses, train_labels = [], []
    validation_losses, validation_labels = [], []
    with torch.no_grad():
        for train_ip, train_label, _idx in train_loader:
            train_ip, train_label = train_ip.to(device), train_label.to(device)
            outputs = model(train_ip)
            loss = criterion_evaluating(outputs, train_label)
            train_losses.extend(loss.detach().cpu().numpy())
            train_labels.extend(train_label.detach().cpu().numpy())
    with torch.no_grad():
        for val_ip, val_label, _idx in validation_loader:
            val_ip, val_label = val_ip.to(device), val_label.to(device)
            outputs_val = model(val_ip)
            loss_val = criterion_evaluating(outputs_val, val_label)
            validation_losses.extend(loss_val.detach().cpu().numpy())
            validation_labels.extend(val_label.detach().cpu().numpy())
    return train_losses, validation_losses, train_labels, validation_labels


@dataclass
class CollectResult:
    loss_path: Path
    seconds: float                 # whole loop, training start -> pickle written
    train_seconds: float           # training steps only
    collect_seconds: float         # per-epoch loss collection passes (train split + V)
    training_end: float            # perf_counter() when the last epoch (and its pass) ended
    pickle_seconds: float
    extra_forward_passes: int      # passes over the whole training split
    test_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Loop:
    """What the authors' main loop holds: model, optimiser, schedule and loaders."""

    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_set: IndexedSubset
    eval_train_loader: Any
    validation_loader: Any
    test_loader: Any


def _set_up(bundle: DatasetBundle, train_indices: np.ndarray, val_indices: np.ndarray, arch: str,
            recipe: Recipe, eval_bs: int) -> _Loop:
    device = recipe.resolved_device()
    seed_everything(recipe.seed)
    model = build_model(arch, bundle.num_classes, bundle.input_shape).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay,
                                nesterov=recipe.nesterov and recipe.momentum > 0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, recipe.resolved_milestones(),
                                                     recipe.gamma)
    return _Loop(device, model, optimizer, scheduler, IndexedSubset(bundle.train, train_indices),
                 make_loader(IndexedSubset(bundle.train_eval, train_indices), eval_bs,
                             shuffle=False, num_workers=recipe.workers),
                 make_loader(IndexedSubset(bundle.train_eval, val_indices), eval_bs,
                             shuffle=False, num_workers=recipe.workers),
                 make_loader(IndexedSubset(bundle.test, np.arange(len(bundle.test_targets))),
                             eval_bs, shuffle=False, num_workers=recipe.workers))


def _save_best(loop: _Loop, out_dir: Path, arch: str, seed: int, epoch_no: int, acc: float) -> None:
    ckpt = out_dir / "Checkpoint" / f"checkpoint_{arch}_seed{seed}.pth.tar"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch_no + 1, "state_dict": loop.model.state_dict(), "acc": acc,
                "best_acc": acc, "optimizer": loop.optimizer.state_dict()}, ckpt)


def _run_epoch(loop: _Loop, bundle: DatasetBundle, recipe: Recipe, epoch_no: int,
               stored_results: dict[str, list], result: "CollectResult",
               test_every_epoch: bool) -> dict[str, float]:
    """One epoch of the authors' loop: training, optional test, the loss collection."""
    t0 = time.perf_counter()
    # Same shuffling and augmentation stream as cldfast.training.fit.
    torch.manual_seed(epoch_seed(recipe.seed, epoch_no))
    train_loader = make_loader(loop.train_set, recipe.batch_size, shuffle=True,
                               num_workers=recipe.workers, seed=epoch_seed(recipe.seed, epoch_no))
    train_loss, train_acc = _train_epoch(train_loader, loop.model, loop.optimizer, loop.device,
                                         bundle.num_classes)
    t1 = time.perf_counter()
    entry = {"epoch": epoch_no + 1, "train_loss": train_loss, "train_acc": train_acc / 100}
    if test_every_epoch:
        _test_loss, test_acc = _test_epoch(loop.test_loader, loop.model, loop.device)
        entry["test_acc"] = test_acc
    loop.scheduler.step()
    t2 = time.perf_counter()
    tr, val, tr_lbl, val_lbl = get_train_validation_losses(loop.model, loop.eval_train_loader,
                                                           loop.validation_loader, loop.device)
    stored_results["epoch"].append(epoch_no)
    stored_results["tr_loss"].append(tr)
    stored_results["val_loss"].append(val)
    stored_results["tr_lbl"].append(tr_lbl)
    stored_results["val_lbl"].append(val_lbl)
    result.extra_forward_passes += 1
    t3 = time.perf_counter()
    result.train_seconds += t1 - t0
    result.collect_seconds += t3 - t2
    return entry


def collect_losses(bundle: DatasetBundle, train_indices: np.ndarray, val_indices: np.ndarray,
                   arch: str, recipe: Recipe, out_dir: str | os.PathLike, *,
                   test_every_epoch: bool = False, test_batch_size: int | None = None
                   ) -> CollectResult:
    """The authors' get_loss_values.py main loop on a cldfast dataset and recipe.

    Args:
        train_indices, val_indices: int64 ORIGINAL dataset indices of the training and
            validation splits (cldfast.data.split_train_val).
        out_dir: where ``Scores/<name>_losses.pickle`` (and, with ``test_every_epoch``, the
            best-accuracy checkpoint) are written.
        test_every_epoch: evaluate the test split after every epoch and save a checkpoint on
            a new best accuracy, as the authors' script does.
        test_batch_size: batch size of the loss-collection passes (the authors' default is
            256; default here: ``recipe.eval_batch_size``, what cldfast's eval mode uses).
    """
    recipe.check()
    recipe = recipe.resolved(bundle.train)  # workers="auto": 0 on the in-memory data, as before
    out_dir = Path(out_dir)
    loop = _set_up(bundle, train_indices, val_indices, arch, recipe,
                   int(test_batch_size or recipe.eval_batch_size))
    stored_results: dict[str, list] = {"epoch": [], "tr_loss": [], "val_loss": [],
                                       "tr_lbl": [], "val_lbl": []}
    result = CollectResult(loss_path=Path(), seconds=0.0, train_seconds=0.0, collect_seconds=0.0,
                           training_end=0.0, pickle_seconds=0.0, extra_forward_passes=0,
                           test_accuracy=float("nan"))
    best_acc = 0.0
    t_start = time.perf_counter()
    for epoch_no in range(recipe.epochs):
        t0 = time.perf_counter()
        entry = _run_epoch(loop, bundle, recipe, epoch_no, stored_results, result, test_every_epoch)
        if test_every_epoch and entry["test_acc"] > best_acc:
            best_acc = entry["test_acc"]
            _save_best(loop, out_dir, arch, recipe.seed, epoch_no, best_acc)
        entry["seconds"] = time.perf_counter() - t0
        result.history.append(entry)
    result.training_end = time.perf_counter()
    _test_loss, result.test_accuracy = _test_epoch(loop.test_loader, loop.model, loop.device)

    t_pickle = time.perf_counter()
    scores_dir = out_dir / "Scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    result.loss_path = scores_dir / f"{bundle.name}_{arch}_seed{recipe.seed}_losses.pickle"
    with open(result.loss_path, "wb") as f:
        pickle.dump(stored_results, f, pickle.HIGHEST_PROTOCOL)
    done = time.perf_counter()
    result.pickle_seconds = done - t_pickle
    result.seconds = done - t_start
    return result


def compute_cld_scores(loss_path: str | os.PathLike, num_classes: int,
                       out_path: str | os.PathLike | None = None,
                       train_indices: np.ndarray | None = None
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The authors' Compute_CLD_scores.py: per-class Pearson correlation of loss differences.

    Returns (scores float64 [N] in training-split order, NaN for classes without training or
    validation samples; the authors' ``CDL_sort`` dict: class id (str) -> positions (or,
    with ``train_indices``, original dataset indices) sorted by descending CLD). With
    ``out_path`` the dict is pickled there, as the authors do.
    """
    with open(loss_path, "rb") as f:
        loaded = pickle.load(f)  # the authors' own file: trusted here, as in their script
    tr_loss_list, val_loss_list = loaded["tr_loss"], loaded["val_loss"]
    tr_lbl_list, val_lbl_list = loaded["tr_lbl"], loaded["val_lbl"]
    train_losses = np.vstack([np.asarray(x, dtype=float) for x in tr_loss_list])  # (E, N)
    val_losses = np.vstack([np.asarray(x, dtype=float) for x in val_loss_list])   # (E, Q)
    train_labels = np.asarray(tr_lbl_list[0])
    val_labels = np.asarray(val_lbl_list[0])
    E, n_train = train_losses.shape
    assert E == val_losses.shape[0], "Train and val losses must have same number of epochs"
    d_train = np.diff(train_losses, axis=0)  # (E-1, N)
    scores = np.full(n_train, np.nan)
    cdl_sort: dict[str, np.ndarray] = {}
    for i in range(num_classes):
        train_mask = train_labels == i
        val_mask = val_labels == i
        if not np.any(train_mask) or not np.any(val_mask):
            cdl_sort[str(i)] = np.array([], dtype=int)
            continue
        avg_val_loss = val_losses[:, val_mask].mean(axis=1)
        d_avg_val = np.diff(avg_val_loss)
        X = d_train[:, train_mask]
        X_mean = X.mean(axis=0)
        X_std = X.std(axis=0)
        y = d_avg_val
        y_mean = y.mean()
        y_std = y.std()
        X_std_safe = np.where(X_std == 0, 1.0, X_std)
        y_std_safe = 1.0 if y_std == 0 else y_std
        Xz = (X - X_mean) / X_std_safe
        yz = (y - y_mean) / y_std_safe
        r = (Xz * yz[:, None]).mean(axis=0)
        scores[train_mask] = r
        order = np.argsort(r)[::-1]
        positions = np.flatnonzero(train_mask)[order]
        cdl_sort[str(i)] = (np.asarray(train_indices)[positions] if train_indices is not None
                            else positions)
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "wb") as f:
            pickle.dump(cdl_sort, f, protocol=pickle.HIGHEST_PROTOCOL)
    return scores, cdl_sort


def simulate_stored_results(n_train: int, n_val: int, epochs: int, num_classes: int, *,
                            batch_size: int = 256, seed: int = 0) -> dict[str, list]:
    """The authors' ``stored_results`` dict filled with random losses, exactly as their loop
    builds it (per epoch, per batch of ``batch_size``: ``list.extend`` of a float32 loss
    array and an int64 label array), without training anything. For memory figures."""
    rng = np.random.default_rng(seed)
    tr_labels = rng.integers(0, num_classes, n_train).astype(np.int64)
    val_labels = np.arange(n_val, dtype=np.int64) % num_classes
    stored: dict[str, list] = {"epoch": [], "tr_loss": [], "val_loss": [], "tr_lbl": [],
                               "val_lbl": []}
    for epoch in range(epochs):
        tr, trl, val, vall = [], [], [], []
        for lo in range(0, n_train, batch_size):
            hi = min(lo + batch_size, n_train)
            tr.extend(rng.random(hi - lo, dtype=np.float32) * 5)
            trl.extend(tr_labels[lo:hi])
        for lo in range(0, n_val, batch_size):
            hi = min(lo + batch_size, n_val)
            val.extend(rng.random(hi - lo, dtype=np.float32) * 5)
            vall.extend(val_labels[lo:hi])
        stored["epoch"].append(epoch)
        stored["tr_loss"].append(tr)
        stored["val_loss"].append(val)
        stored["tr_lbl"].append(trl)
        stored["val_lbl"].append(vall)
    return stored


def main(argv: list[str] | None = None) -> int:
    from cldfast.data import load_dataset, split_train_val

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--arch", default="small-cnn")
    ap.add_argument("--subset", type=int, default=0, help="use only the first N training items (0: all)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "_work" / "authors"))
    ap.add_argument("--test-every-epoch", action="store_true", help="as the authors' script does")
    args = ap.parse_args(argv)
    bundle = load_dataset("auto")
    targets = bundle.train_targets
    train_idx, val_idx = split_train_val(targets, 0.1, 0)
    if args.subset:
        train_idx, val_idx = train_idx[train_idx < args.subset], val_idx[val_idx < args.subset]
    recipe = Recipe(epochs=args.epochs, device="cpu")
    res = collect_losses(bundle, train_idx, val_idx, args.arch, recipe, args.out,
                         test_every_epoch=args.test_every_epoch)
    t0 = time.perf_counter()
    scores, _ = compute_cld_scores(res.loss_path, bundle.num_classes,
                                   Path(args.out) / "Scores" / "CLD_indices_sorted.pkl", train_idx)
    print(f"trained {args.epochs} epochs in {res.seconds:.1f} s ({res.extra_forward_passes} extra "
          f"passes over {train_idx.size} samples); pickle {res.loss_path.stat().st_size / 2**20:.1f} MiB; "
          f"offline CLD {time.perf_counter() - t0:.2f} s; test accuracy {100 * res.test_accuracy:.2f} %; "
          f"{int(np.isfinite(scores).sum())} samples scored")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
