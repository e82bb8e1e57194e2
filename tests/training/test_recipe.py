"""Recipes: optimizers, schedules with warm-up, label smoothing (cldfast.training.recipe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cldfast.training import Recipe, make_optimizer, make_scheduler
from cldfast.training.recipe import smoothed_losses


def _lrs(recipe: Recipe) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model.parameters(), recipe)
    sched = make_scheduler(opt, recipe)
    out = []
    for _ in range(recipe.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_multistep_keeps_the_milestones():
    lrs = _lrs(Recipe(epochs=10, lr=0.1, warmup_epochs=2, milestones=(5, 7)))
    np.testing.assert_allclose(lrs, [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001],
                               rtol=1e-9)
    assert _lrs(Recipe(epochs=10, lr=0.1, milestones=(5, 7)))[:5] == [0.1] * 5  # no warm-up


def test_cosine_with_warmup_reaches_the_peak_then_anneals():
    lrs = _lrs(Recipe(epochs=8, lr=0.2, schedule="cosine", warmup_epochs=3))
    assert lrs[:3] == pytest.approx([0.05, 0.1, 0.15]) and lrs[3] == pytest.approx(0.2)
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))


def test_adamw_and_sgd():
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model.parameters(), Recipe(optimizer="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.05
    sgd = make_optimizer(model.parameters(), Recipe())
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]


def test_label_smoothing_is_torchs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g)
    y = torch.randint(0, 5, (7,), generator=g)
    ce = F.cross_entropy(logits, y, reduction="none")
    got = smoothed_losses(ce, logits, 0.2)
    torch.testing.assert_close(got, F.cross_entropy(logits, y, reduction="none", label_smoothing=0.2))
    assert smoothed_losses(ce, logits, 0.0) is ce


def test_bad_recipes_are_named():
    for kw, match in (({"optimizer": "lamb"}, "optimizer must be"),
                      ({"warmup_epochs": 10, "epochs": 10}, "warmup_epochs"),
                      ({"label_smoothing": 1.0}, "label_smoothing"),
                      ({"schedule": "step"}, "schedule must be")):
        with pytest.raises(ValueError, match=match):
            Recipe(**kw).check()


def test_identity_leaves_later_fields_out_at_their_defaults():
    """Checkpoints and bench cells written before optimizer / warm-up / label smoothing
    existed still match a default recipe."""
    base = Recipe(epochs=3).identity()
    assert not {"optimizer", "warmup_epochs", "label_smoothing"} & set(base)
    assert base["epochs"] == 3 and base["lr"] == Recipe().lr
    assert Recipe(optimizer="adamw", label_smoothing=0.1).identity()["optimizer"] == "adamw"
