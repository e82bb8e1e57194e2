"""fit()'s public hooks: their order (tracking's eval pass and closed tracked epoch, then the
recorders, then the callbacks, then the resume checkpoint), the context they get, and
callback / recorder state saved in resume checkpoints by state_key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cldfast import CLDTracker
from cldfast.data import load_dataset, split_train_val
from cldfast.io import load_checkpoint
from cldfast.training import Callback, FitContext, Recipe, TrainBatch, Tracking, fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


class Log(list):
    """The events of one run, in the order they happened."""


class OrderTracker(CLDTracker):
    def __init__(self, *a, log: Log, **kw):
        super().__init__(*a, **kw)
        self.log = log

    def end_epoch(self):
        self.log.append(("tracker.end_epoch", None))
        return super().end_epoch()


class Recorder:
    state_key = "recorder"

    def __init__(self, log: Log):
        self.log, self.batches = log, 0

    def on_batch(self, positions, logits, targets, epoch):
        self.batches += 1

    def on_epoch_end(self, epoch):
        self.log.append(("recorder.on_epoch_end", epoch))

    def score_arrays(self):
        return {}

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


class Counter(Callback):
    def __init__(self, log: Log, key: str | None = None):
        self.log, self.batches, self.samples = log, 0, 0
        if key:
            self.state_key = key

    def on_fit_start(self, ctx):
        assert isinstance(ctx, FitContext)
        self.log.append(("on_fit_start", ctx.epoch))

    def on_train_batch(self, ctx, batch):
        assert isinstance(batch, TrainBatch) and batch.epoch == ctx.epoch
        assert batch.logits.shape == (batch.positions.shape[0], ctx.bundle.num_classes)
        assert not batch.logits.requires_grad
        self.batches += 1
        self.samples += int(batch.positions.shape[0])

    def on_epoch_end(self, ctx, epoch):
        assert isinstance(ctx.model, torch.nn.Module) and ctx.epoch == epoch
        self.log.append(("callback.on_epoch_end", epoch))
        return {"callback_batches": float(self.batches)}

    def on_fit_end(self, ctx):
        self.log.append(("on_fit_end", ctx.epoch))

    def state_dict(self):
        return {"batches": self.batches, "samples": self.samples}

    def load_state_dict(self, state):
        self.batches, self.samples = state["batches"], state["samples"]


def test_hook_order_context_and_logged_metrics(digits):
    train_idx, val_idx = split_train_val(digits.train_targets, 0.1, 0)
    labels = digits.train_targets[train_idx]
    log = Log()
    tracker = OrderTracker(labels, digits.train_targets[val_idx], num_classes=10, log=log)
    cb, rec = Counter(log), Recorder(log)
    res = fit(digits, train_idx, "small-cnn", Recipe(epochs=3, batch_size=256, device="cpu"),
              tracking=Tracking(tracker, "eval", val_idx, [0, 2]), recorders=[rec],
              callbacks=[cb], evaluate_test=False, progress=False)
    names = [e[0] for e in log]
    assert names == ["on_fit_start",
                     "tracker.end_epoch", "recorder.on_epoch_end", "callback.on_epoch_end",
                     "recorder.on_epoch_end", "callback.on_epoch_end",  # epoch 2 is not tracked
                     "tracker.end_epoch", "recorder.on_epoch_end", "callback.on_epoch_end",
                     "on_fit_end"]
    batches_per_epoch = -(-train_idx.size // 256)
    assert cb.batches == rec.batches == 3 * batches_per_epoch
    assert cb.samples == 3 * train_idx.size
    assert [h["callback_batches"] for h in res.history] == [batches_per_epoch * (e + 1) for e in range(3)]
    assert "val_loss" in res.history[0] and "val_loss" not in res.history[1]


def test_callback_and_recorder_state_resume_by_key(digits, tmp_path):
    train_idx = np.arange(300)
    recipe = Recipe(epochs=3, batch_size=64, device="cpu")
    ckpt = tmp_path / "run.pt"
    first = Counter(Log(), key="counter")
    fit(digits, train_idx, "small-cnn", recipe, stop_epoch=2, checkpoint=ckpt,
        callbacks=[first], recorders=[Recorder(Log())], evaluate_test=False, progress=False)
    saved = load_checkpoint(ckpt)
    assert saved["callbacks"] == {"counter": {"batches": 10, "samples": 600}}
    assert saved["recorders"] == {"recorder": {"batches": 10}}

    again, rec = Counter(Log(), key="counter"), Recorder(Log())
    fit(digits, train_idx, "small-cnn", recipe, checkpoint=ckpt, resume=True, callbacks=[again],
        recorders=[rec], evaluate_test=False, progress=False)
    assert (again.batches, again.samples, rec.batches) == (15, 900, 15)

    with pytest.raises(ValueError, match="no state for the callback 'other'"):
        fit(digits, train_idx, "small-cnn", recipe, checkpoint=ckpt, resume=True,
            callbacks=[Counter(Log(), key="other")], recorders=[Recorder(Log())],
            evaluate_test=False, progress=False)


def test_duplicate_state_keys_are_refused(digits):
    with pytest.raises(ValueError, match=r"share the state_key \['Counter'\]"):
        fit(digits, np.arange(64), "small-cnn", Recipe(epochs=1, device="cpu"),
            callbacks=[Counter(Log()), Counter(Log())], evaluate_test=False, progress=False)
