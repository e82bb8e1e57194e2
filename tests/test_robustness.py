"""Robustness: a hypothesis state machine drives CLDTracker through random sequences of
record / record_validation / end_epoch / discard_epoch / state_dict round trips / bad
indices, checked against the numpy reference after every checkpoint; and every file reader
is fed mutated bytes and must answer with a clean, named error (never a deep traceback)."""

from __future__ import annotations

import gzip
import io
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cldfast import CLDTracker, CLDWarning, read_authors_pickle
from cldfast.data import read_idx
from cldfast.io import (CorruptFileError, ScoresFile, load_checkpoint, load_indices, load_scores,
                        save_checkpoint, save_indices, save_scores)

from numpy_reference import cld_reference

GRID = st.integers(0, 40).map(lambda k: k / 4.0)  # exact in float32, sums exact too
NON_FINITE = st.sampled_from([float("nan"), float("inf"), -float("inf")])


class TrackerMachine(RuleBasedStateMachine):
    """The tracker and a plain record of every observation, compared at each checkpoint."""

    @initialize(n=st.integers(1, 12), classes=st.integers(1, 3), per_class=st.booleans(),
                data=st.data())
    def setup(self, n, classes, per_class, data):
        self.labels = np.array(data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
        self.val_labels = np.array(data.draw(st.lists(st.integers(0, classes - 1), min_size=1, max_size=5)))
        self.per_class = per_class
        self.num_classes = int(max(self.labels.max(), self.val_labels.max())) + 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CLDWarning)
            self.tracker = CLDTracker(self.labels, self.val_labels, per_class=per_class,
                                      num_classes=self.num_classes)
        self.closed: list[list[tuple[int, float]]] = []
        self.closed_val: list[np.ndarray] = []
        self.open: list[tuple[int, float]] = []
        self.val: np.ndarray | None = None
        self.recorded = False
        self.bad_pending = False
        self.nonfinite = 0

    @rule(data=st.data())
    def record(self, data):
        n = self.labels.size
        batch = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.one_of(GRID, GRID, GRID, NON_FINITE)),
                                   min_size=0, max_size=6))
        self.tracker.record(torch.tensor([i for i, _ in batch], dtype=torch.int64),
                            torch.tensor([v for _, v in batch], dtype=torch.float32))
        self.open.extend(batch)
        self.nonfinite += sum(not np.isfinite(v) for _, v in batch)
        self.recorded = True

    @rule(bad=st.sampled_from([-1, -7, 10**6]))
    def record_bad_index(self, bad):
        self.tracker.record(torch.tensor([bad]), torch.tensor([1.0]))
        self.bad_pending = True
        self.recorded = True

    @rule(values=st.data())
    def record_validation(self, values):
        q = self.val_labels.size
        v = np.array(values.draw(st.lists(GRID, min_size=q, max_size=q)))
        self.tracker.record_validation(torch.tensor(v, dtype=torch.float32))
        # The class means are of everything recorded in the epoch; keep one record per call.
        self.val = v if self.val is None else np.concatenate([self.val, v])

    @rule()
    def end_epoch(self):
        if not self.recorded or self.val is None:
            with pytest.raises(RuntimeError):
                self.tracker.end_epoch()
            return
        if self.bad_pending:
            with pytest.raises(IndexError, match="outside"):
                self.tracker.end_epoch()
            self.bad_pending = False
            return  # the epoch stays open with its valid observations
        self.tracker.end_epoch()
        self.closed.append(self.open)
        reps = self.val.size // self.val_labels.size
        self.closed_val.append(self.val.reshape(reps, -1))
        self.open, self.val, self.recorded = [], None, False

    @rule()
    def discard(self):
        self.tracker.discard_epoch()
        self.open, self.val, self.recorded, self.bad_pending = [], None, False, False

    @rule()
    def roundtrip(self):
        blob = io.BytesIO()
        torch.save(self.tracker.state_dict(), blob)
        blob.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CLDWarning)
            fresh = CLDTracker(self.labels, self.val_labels, per_class=self.per_class,
                               num_classes=self.num_classes)
        fresh.load_state_dict(torch.load(blob, weights_only=True))
        self.tracker = fresh
        # Pending bad-index flags are part of the state: they still raise at end_epoch.

    @invariant()
    def matches_reference(self):
        if not hasattr(self, "tracker"):
            return
        assert self.tracker.checkpoint == len(self.closed)
        if not self.closed:
            return
        # Repeated record_validation calls in an epoch: each class's value is the mean over all
        # recorded validation losses of the class, i.e. over the stacked rows.
        val_rows = [v.reshape(-1) for v in self.closed_val]
        val_labels = [np.tile(self.val_labels, v.shape[0]) for v in self.closed_val]
        want = reference_with_varying_val(self.closed, val_rows, val_labels, self.labels,
                                          self.per_class, self.num_classes)
        got = self.tracker.scores().numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, atol=1e-9, equal_nan=True)


def reference_with_varying_val(observations, val_rows, val_labels, labels, per_class, num_classes):
    """cld_reference, with the validation rows of each checkpoint given with their labels."""
    # Each checkpoint's validation is expressed through one synthetic validation set whose class
    # means equal the recorded ones: one entry per class (plus the global mean for the rest).
    means = []
    for v, vl in zip(val_rows, val_labels):
        row = np.full(num_classes, v.mean())
        for c in range(num_classes):
            if (vl == c).any():
                row[c] = v[vl == c].mean()
        means.append(row)
    present = np.array([(val_labels[0] == c).any() for c in range(num_classes)])
    synth_labels = np.flatnonzero(present)
    if not per_class:
        # Global mean over all recorded losses: weight the classes by their counts.
        synth = [np.array([v.mean()]) for v in val_rows]
        return cld_reference(observations, synth, labels, np.zeros(1, int), per_class=False)
    synth = [m[synth_labels] for m in means]
    out = cld_reference(observations, synth, labels, synth_labels, per_class=True)
    # Classes with no validation samples use the global mean of all recorded losses.
    missing = ~present[labels]
    if missing.any():
        glob = cld_reference(observations, [np.array([v.mean()]) for v in val_rows], labels,
                             np.zeros(1, int), per_class=False)
        out[missing] = glob[missing]
    return out


TestTrackerMachine = TrackerMachine.TestCase
TestTrackerMachine.settings = settings(max_examples=120, stateful_step_count=25, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------
# Fuzzing the file readers with mutated bytes
# ----------------------------------------------------------------------------------------
FUZZ_CASES = 250  # per reader


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.choice(["flip", "truncate", "insert", "zero", "shuffle_block"])
    if not b:
        return bytes([rng.randrange(256)])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        b = b[: rng.randrange(len(b))]
    elif kind == "insert":
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == "zero":
        i = rng.randrange(len(b))
        b[i:i + rng.randint(1, 64)] = bytes(min(64, len(b) - i))
    else:
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b[i:j] = bytes(reversed(b[i:j]))
    return bytes(b)


def valid_files(tmp: Path) -> dict[str, tuple[Path, object]]:
    rng = np.random.default_rng(0)
    scores = tmp / "scores.npz"
    save_scores(scores, ScoresFile(rng.random(50), rng.integers(0, 5, 50), np.arange(50) * 2,
                                   np.arange(10) * 2 + 1, {"dataset": "x", "fingerprint": "f"}))
    indices = tmp / "indices.npy"
    save_indices(indices, np.arange(0, 40, 3))
    ckpt = tmp / "ckpt.pt"
    tracker = CLDTracker(np.arange(20) % 3, [0, 1, 2])
    save_checkpoint(ckpt, {"tracker": tracker.state_dict(), "epoch": 3, "history": [{"a": 1.0}]})
    authors = tmp / "losses.pickle"
    authors.write_bytes(pickle.dumps({"tr_loss": [list(rng.random(6).astype(np.float32))] * 3,
                                      "val_loss": [list(rng.random(2))] * 3,
                                      "tr_lbl": [0, 1, 0, 1, 0, 1], "val_lbl": [0, 1]}))
    idx = tmp / "train-labels-idx1-ubyte.gz"
    header = np.array([0x00000801, 30], dtype=">u4").tobytes()
    idx.write_bytes(gzip.compress(header + bytes(range(30))))
    return {
        "scores": (scores, lambda p: load_scores(p)),
        "indices": (indices, lambda p: load_indices(p, 100)),
        "checkpoint": (ckpt, lambda p: load_checkpoint(p)),
        "authors_pickle": (authors, lambda p: read_authors_pickle(p)),
        "idx": (idx, lambda p: read_idx(p)),
    }


@pytest.mark.parametrize("reader", ["scores", "indices", "checkpoint", "authors_pickle", "idx"])
def test_readers_survive_mutated_bytes(tmp_path, reader):
    path, read = valid_files(tmp_path)[reader]
    read(path)  # the unmutated file reads
    original = path.read_bytes()
    rng = random.Random(reader)
    clean_errors = 0
    for case in range(FUZZ_CASES):
        target = path.with_name(f"fuzz{case}" + "".join(path.suffixes))
        target.write_bytes(mutate(original, rng))
        try:
            read(target)
        except (CorruptFileError, ValueError, FileNotFoundError) as exc:
            assert str(target.name) in str(exc) or str(target) in str(exc), \
                f"{reader}: error does not name the file: {exc!r}"
            clean_errors += 1
        target.unlink()
    assert clean_errors > 0  # the mutations really did break files
