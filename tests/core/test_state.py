"""cldfast.core.state: a declared entry is counted, reset, saved, checked, loaded and summed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cldfast.core.state import Stateful


def _rows_in_use(state):
    return int(state["used"])


class Toy(Stateful):
    state_key = "toy"

    def __init__(self, n=5, size="small"):
        self.add_config("size", size)
        self.add_config("note", "informative only", message=None)
        self.add_state("acc", torch.zeros(n, dtype=torch.float64))
        self.add_state("epoch", torch.zeros(2, n, dtype=torch.float32), reset=0.0, reduce="sum")
        self.add_state("_scratch", torch.zeros(n, dtype=torch.int32), key=None, reset=0.0)
        self.add_state("_count", torch.zeros((), dtype=torch.int64), key="count", encode=int,
                       default=0)
        self.add_value("used", 0)
        self.add_state("_rows", torch.zeros(4, 2, dtype=torch.float64), key="rows",
                       rows=_rows_in_use)
        self.add_value("history", [], default=[])


def test_declared_state_follows_from_the_declaration():
    t = Toy()
    assert t.nbytes == 5 * 8 + 2 * 5 * 4 + 5 * 4 + 8 + 4 * 2 * 8
    t.acc += 1.5
    t.epoch += 2
    t._scratch += 3
    t._count += 7
    t.used = 3
    t._rows[:3] = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    t.history.append({"epoch": 1})
    saved = t.state_dict()
    assert set(saved) == {"size", "note", "acc", "epoch", "count", "used", "rows", "history"}
    assert saved["count"] == 7 and isinstance(saved["count"], int)
    assert saved["rows"].shape == (3, 2)  # only the rows in use
    t.history.append({"epoch": 2})  # a snapshot: later updates do not change it
    assert saved["history"] == [{"epoch": 1}]
    t.reset_states()
    assert float(t.epoch.abs().sum()) == 0 and int(t._scratch.sum()) == 0
    assert float(t.acc.sum()) == 7.5  # not declared with a reset value
    fresh = Toy()
    fresh.load_state_dict(saved)
    np.testing.assert_array_equal(fresh.acc.numpy(), np.full(5, 1.5))
    np.testing.assert_array_equal(fresh.epoch.numpy(), np.full((2, 5), 2.0))
    assert int(fresh._count) == 7 and fresh.used == 3 and fresh.history == [{"epoch": 1}]
    np.testing.assert_array_equal(fresh._rows[:3].numpy(), [[1, 2], [3, 4], [5, 6]])
    (summed,) = fresh.summed_states(distributed=False)
    assert summed.dtype == torch.float64 and float(summed.sum()) == 20.0


def test_a_buffer_declared_with_rows_grows_to_a_larger_state():
    t = Toy()
    t.used = 6
    t._rows = torch.arange(12, dtype=torch.float64).reshape(6, 2)
    fresh = Toy()
    fresh.load_state_dict(t.state_dict())
    assert fresh._rows.shape == (6, 2)
    np.testing.assert_array_equal(fresh._rows.numpy(), np.arange(12).reshape(6, 2))


def test_an_older_state_takes_the_defaults():
    t = Toy()
    t._count += 2
    t.history.append(1)
    saved = t.state_dict()
    del saved["count"], saved["history"]
    fresh = Toy()
    fresh._count += 5
    fresh.load_state_dict(saved)
    assert int(fresh._count) == 0 and fresh.history == []


def test_a_damaged_state_is_refused_before_anything_changes():
    t = Toy()
    t.acc += 1
    bad = t.state_dict()
    bad["epoch"] = torch.zeros(3, 5)
    other = Toy()
    with pytest.raises(ValueError, match="toy state 'epoch' should be torch.float32 \\(2, 5\\)"):
        other.load_state_dict(bad)
    missing = t.state_dict()
    del missing["acc"]
    with pytest.raises(KeyError, match="missing 'acc'"):
        other.load_state_dict(missing)
    with pytest.raises(ValueError, match="'rows' should be torch.float64 \\(2, 2\\)"):
        other.load_state_dict({**t.state_dict(), "used": 2})
    with pytest.raises(ValueError, match="toy state has size='small' but this toy has size='big'"):
        Toy(size="big").load_state_dict(t.state_dict())
    Toy().load_state_dict({**t.state_dict(), "note": "another"})  # not compared
    assert float(other.acc.sum()) == 0
    with pytest.raises(ValueError, match="reduce must be"):
        other.add_state("x", torch.zeros(1), reduce="max")


def test_tracker_recorders_and_pruners_use_the_pattern():
    from cldfast import CLDTracker
    from cldfast.scores import AUMRecorder
    from cldfast.training.pruning import make_pruner

    tr = CLDTracker([0, 1, 0, 1], [0, 1])
    pruner = make_pruner("infobatch", num_samples=4, epochs=4)
    for obj in (tr, AUMRecorder(4), pruner):
        assert isinstance(obj, Stateful)
    # The tracker's checkpoint keys (format 3), declared once in the tracker.
    assert set(tr.state_dict()) == {
        "format", "version", "num_samples", "num_classes", "per_class", "precision",
        "world_size", "rank", "num_checkpoints", "train_labels_sha256", "val_labels",
        "checkpoint", "nonfinite_train", "nonfinite_val", "observed_per_checkpoint", "recorded",
        "val_recorded", "epoch", "last", "i32_state", "acc", "flags", "val_samples",
        "val_nonfinite", "history_base", "val_history", "val_trajectory"}
    assert set(pruner.state_dict()) == {"recorder", "config", "weights", "kept", "planned_epoch",
                                        "passes_used", "passes_full", "history", "loss_scores"}
    assert (tr.state_key, AUMRecorder(4).state_key, pruner.state_key) == (
        "tracker", "aum", "pruner-infobatch")
