"""One eval-mode pass with the final proxy: last-layer GraNd and the embeddings the geometry
methods (Herding, k-Center Greedy) select on."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..selection.methods import METHODS, canonical_method

__all__ = ["last_linear", "embed_and_grand", "make_final_scores"]


# --------------------------------------------------------------------------------------------
# One pass with the final model: GraNd and embeddings
# --------------------------------------------------------------------------------------------

def last_linear(model: nn.Module, num_classes: int | None = None) -> nn.Linear:
    """The classifier layer: the last registered ``nn.Linear`` (with ``num_classes`` outputs
    when given). Works for cldfast's small CNN and torchvision's ResNets, VGGs, DenseNets."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear)
             and (num_classes is None or m.out_features == int(num_classes))]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer"
                         + (f" with {num_classes} outputs" if num_classes else "")
                         + ": GraNd and the embedding methods need a final linear classifier")
    return found[-1]


@torch.no_grad()
def embed_and_grand(model: nn.Module, dataset, indices: np.ndarray, labels: np.ndarray, *,
                    batch_size: int = 512, device: torch.device | str | None = None,
                    workers: int = 0, keep_embeddings: bool = True, amp: bool = False,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """One eval-mode pass over ``dataset[indices]`` (:func:`cldfast.training.eval_batches`):
    last-layer GraNd and embeddings.

    Args:
        model: a trained classifier whose last ``nn.Linear`` maps embeddings to logits.
        dataset: map-style dataset of ``(x, y)`` (e.g. ``bundle.train_eval``).
        indices: int64 [N] original dataset indices.
        labels: int [N] labels of those samples (checked against the dataset's).
        keep_embeddings: also return the penultimate embeddings (float32 [N, D], CPU).

    Returns ``(grand float64 [N], embeddings float32 [N, D] or None)``.
    """
    from ..training.evaluation import eval_batches

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    fc = last_linear(model)
    captured: dict[str, torch.Tensor] = {}
    hook = fc.register_forward_pre_hook(lambda mod, inp: captured.__setitem__("h", inp[0]))
    was_training = model.training
    n = int(len(indices))
    grand = np.empty(n, np.float64)
    emb = np.empty((n, fc.in_features), np.float32) if keep_embeddings else None
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    checked = False
    try:
        for where, z, y in eval_batches(model, dataset, indices, batch_size=batch_size, device=dev,
                                        workers=workers, amp=amp, desc="final pass",
                                        progress=progress):
            if not torch.equal(y.cpu().long(), y_all[where]):
                raise ValueError("labels do not match the dataset's labels at these indices")
            h = captured["h"].float().reshape(z.shape[0], -1)
            if not checked:
                ref = F.linear(h, fc.weight.float(), None if fc.bias is None else fc.bias.float())
                if not torch.allclose(ref, z, rtol=1e-2, atol=1e-2 * (1 + float(z.abs().max()))):
                    raise ValueError(f"the last nn.Linear of {type(model).__name__} ({fc}) does not "
                                     "produce the model's output; GraNd and embeddings need the "
                                     "classifier to be the final layer")
                checked = True
            err = torch.softmax(z, 1)
            err[torch.arange(err.shape[0], device=err.device), y.to(err.device)] -= 1.0
            hn2 = (h.double() ** 2).sum(1) + (1.0 if fc.bias is not None else 0.0)
            g = torch.linalg.vector_norm(err.double(), dim=1) * hn2.sqrt()
            kk = where.numpy() if isinstance(where, torch.Tensor) else where
            grand[kk] = g.cpu().numpy()
            if emb is not None:
                emb[kk] = h.cpu().numpy()
    finally:
        hook.remove()
        model.train(was_training)
    return grand, emb


def make_final_scores(methods: Sequence[str], *, batch_size: int = 512, workers: int = 0,
                      amp: bool = False, geometry_fraction: float = 1.0,
                      geometry_global: bool = False, seed: int = 0, progress: bool = False,
                      costs: dict[str, Any] | None = None
                      ) -> Callable[[nn.Module, Any, np.ndarray], dict[str, np.ndarray]]:
    """A ``final_scores`` function for :func:`cldfast.pipeline.track`.

    It makes one eval-mode pass over the training split (``bundle.train_eval``) and returns
    ``grand`` and, for each geometry method in ``methods``, its class-balanced pick order
    (``herding`` / ``kcenter``) up to ``geometry_fraction`` of every class, plus the global
    order (``herding_global`` / ``kcenter_global``) when ``geometry_global``. Timings and
    memory go into ``costs`` (pass seconds, per-method seconds, embedding bytes).
    """
    from ..selection.geometry import greedy_scores

    geo = [m for m in (canonical_method(x) for x in methods) if METHODS[m].kind == "geometry"]
    costs = costs if costs is not None else {}

    def final_scores(model: nn.Module, bundle, train_indices: np.ndarray) -> dict[str, np.ndarray]:
        labels = bundle.train_targets[train_indices]
        t0 = time.perf_counter()
        grand, emb = embed_and_grand(model, bundle.train_eval, train_indices, labels,
                                     batch_size=batch_size, workers=workers, amp=amp,
                                     keep_embeddings=bool(geo), progress=progress)
        costs["final_pass_seconds"] = time.perf_counter() - t0
        costs["embedding_bytes"] = int(emb.nbytes) if emb is not None else 0
        costs["embedding_dim"] = int(emb.shape[1]) if emb is not None else 0
        out = {"grand": grand}
        dev = next(model.parameters()).device
        if emb is not None and dev.type == "cuda":  # greedy picks on the GPU (torch backend)
            emb = torch.from_numpy(emb).to(dev)
        for m in geo:
            t1 = time.perf_counter()
            out[m] = greedy_scores(m, emb, labels, fraction=geometry_fraction, class_balanced=True,
                                   seed=seed)
            costs[f"{m}_seconds"] = time.perf_counter() - t1
            if geometry_global:
                t1 = time.perf_counter()
                out[f"{m}_global"] = greedy_scores(m, emb, labels, fraction=geometry_fraction,
                                                   class_balanced=False, seed=seed)
                costs[f"{m}_global_seconds"] = time.perf_counter() - t1
        costs["geometry_fraction"] = float(geometry_fraction)
        return out

    return final_scores
