"""A real `cldfast track` process killed with SIGKILL at random moments (several times, so
some kills land while a checkpoint is being written) and resumed, and one stopped with
SIGTERM in the middle of an epoch: both end with exactly the scores of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from cldfast.io import load_checkpoint, load_scores

TRACK = [sys.executable, "-m", "cldfast", "track", "--dataset", "digits", "--batch-size", "4",
         "--lr", "0.05", "--epochs", "5", "--quiet", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Run outside the source tree, whose cldfast/ has no compiled module (`python -m` would
# import it from the working directory).
CWD = tempfile.gettempdir()


# Real processes killed and resumed: slow.
pytestmark = pytest.mark.slow


def start(out: Path, resume: bool = True) -> subprocess.Popen:
    cmd = [*TRACK, "--out", str(out)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, env=ENV, cwd=CWD, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("straight")
    proc = start(out, resume=False)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return load_scores(out / "scores.npz").scores


def test_sigkill_at_random_moments_then_resume(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "proxy.pt"
    rng = random.Random(1234)
    kills, epochs_at_kill = 0, []

    def epoch_on_disk() -> int:
        try:
            return int(load_checkpoint(ckpt)["epoch"]) if ckpt.exists() else 0
        except Exception:  # noqa: BLE001 - only complete files are ever renamed into place
            return -1

    for _ in range(3):
        proc = start(out)
        # Each attempt first lets the run commit one more epoch (so it always progresses),
        # then kills it at a random moment of the next one, checkpoint writes included.
        target = max(epoch_on_disk(), 0) + 1
        deadline = time.time() + 300
        while proc.poll() is None and epoch_on_disk() < target and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        kills += 1
        if ckpt.exists():  # whatever is on disk must be a complete checkpoint
            epochs_at_kill.append(int(load_checkpoint(ckpt)["epoch"]))
        leftovers = [p.name for p in ckpt.parent.glob("*.tmp")] if ckpt.parent.exists() else []
        for name in leftovers:  # an interrupted write leaves only its temporary file
            assert name.startswith(".proxy.pt.")
    assert kills == 3, "the run finished before it was interrupted three times; slow it down"
    assert not (out / "scores.npz").exists() or epochs_at_kill[-1:] == [5]
    final = start(out)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err[-3000:]
    np.testing.assert_array_equal(load_scores(out / "scores.npz").scores, uninterrupted)


def test_sigterm_checkpoints_mid_epoch_and_resumes_exactly(uninterrupted, tmp_path):
    out = tmp_path / "preempted"
    ckpt = out / "checkpoints" / "proxy.pt"
    proc = start(out, resume=False)
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into the second epoch
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM: checkpoint written at epoch" in err and "after batch" in err
    state = load_checkpoint(ckpt)
    assert state["batches_done"] > 0  # a mid-epoch checkpoint
    final = start(out)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err[-3000:]
    np.testing.assert_array_equal(load_scores(out / "scores.npz").scores, uninterrupted)
