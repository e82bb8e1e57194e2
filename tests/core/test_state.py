"""cldfast.core.state: a declared buffer is counted, reset, saved, checked and summed."""

from __future__ import annotations

import pytest
import torch

from cldfast.core.state import Stateful


class Toy(Stateful):
    def __init__(self, n=5):
        self.add_state("acc", torch.zeros(n, dtype=torch.float64))
        self.add_state("epoch", torch.zeros(2, n, dtype=torch.float32), reset=0.0, reduce="sum")
        self.add_state("_scratch", torch.zeros(n, dtype=torch.int32), key=None, reset=0.0)


def test_declared_state_follows_from_the_declaration():
    t = Toy()
    assert t.nbytes == 5 * 8 + 2 * 5 * 4 + 5 * 4
    t.acc += 1.5
    t.epoch += 2
    t._scratch += 3
    saved = t.saved_states()
    assert set(saved) == {"acc", "epoch"}  # the scratch buffer is not checkpointed
    t.reset_states()
    assert float(t.epoch.abs().sum()) == 0 and int(t._scratch.sum()) == 0
    assert float(t.acc.sum()) == 7.5  # not declared with a reset value
    fresh = Toy()
    fresh.check_saved(saved, "toy")
    fresh.load_saved(saved)
    torch.testing.assert_close(fresh.acc, saved["acc"])
    torch.testing.assert_close(fresh.epoch, saved["epoch"])
    (summed,) = fresh.summed_states(distributed=False)
    assert summed.dtype == torch.float64 and float(summed.sum()) == 20.0


def test_a_damaged_state_is_refused_before_anything_changes():
    t = Toy()
    t.acc += 1
    bad = t.saved_states()
    bad["epoch"] = torch.zeros(3, 5)
    other = Toy()
    with pytest.raises(ValueError, match="'epoch' should be torch.float32 \\(2, 5\\)"):
        other.check_saved(bad, "toy")
    with pytest.raises(KeyError, match="missing 'acc'"):
        other.check_saved({"epoch": bad["epoch"]}, "toy")
    assert float(other.acc.sum()) == 0
    with pytest.raises(ValueError, match="reduce must be"):
        other.add_state("x", torch.zeros(1), reduce="max")


def test_tracker_and_recorders_use_the_pattern():
    from cldfast import CLDTracker
    from cldfast.scores import AUMRecorder

    tr = CLDTracker([0, 1, 0, 1], [0, 1])
    assert isinstance(tr, Stateful) and isinstance(AUMRecorder(4), Stateful)
    keys = set(tr.saved_states())
    assert keys == {"epoch", "flags", "last", "i32_state", "acc", "val_samples"}
    assert set(tr.state_dict()) >= keys
