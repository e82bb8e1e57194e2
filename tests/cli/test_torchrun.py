"""`torchrun --nproc_per_node=2 -m cldfast track` on CPU (Gloo), end to end: every training
sample scored exactly once, the file accepted by `cldfast select`, a run killed with SIGKILL
and resumed ends with the same scores as an uninterrupted one, and a run stopped by SIGTERM
resumes at another number of processes (2 -> 1, 1 -> 2)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from cldfast.cli import main
from cldfast.io import load_scores

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1"]
TRACK = ["-m", "cldfast", "track", "--dataset", "digits", "--batch-size", "4", "--lr", "0.05",
         "--epochs", "6", "--quiet", "--device", "cpu"]


# End to end under torchrun (several processes, real training): slow.
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, *extra: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [*TORCHRUN, f"--master_port={free_port()}", *TRACK, "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Outside the source tree, whose cldfast/ has no compiled module.
    cwd = tempfile.gettempdir()
    if wait:
        return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_straight")
    proc = torchrun(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_sample_scored_once_and_select_accepts_it(uninterrupted, capsys):
    sf = load_scores(uninterrupted / "scores.npz")
    assert sf.metadata["world_size"] == 2
    n = sf.scores.size
    assert n + sf.val_indices.size == 1437
    assert np.unique(sf.train_indices).size == n  # each training sample exactly once
    assert np.isfinite(sf.scores).all()
    # 6 checkpoints, every sample seen in every epoch: 5 differences each, no more.
    assert (sf.extra["num_differences"] == 5).all()
    out = uninterrupted / "coreset.npy"
    assert main(["select", str(uninterrupted / "scores.npz"), "--fraction", "0.2", "-o", str(out)]) == 0
    assert np.isin(np.load(out), sf.train_indices).all()


def test_killed_and_resumed_run_matches(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    manifest = out / "checkpoints" / "proxy.pt.manifest.json"
    proc = torchrun(out, wait=False)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            tag = json.loads(manifest.read_text())["tag"]  # "epoch<E>" once epoch E is committed
            epoch = int(tag[len("epoch"):]) if tag.startswith("epoch") and "-" not in tag else 0
        except (OSError, ValueError, KeyError):
            epoch = 0
        if epoch >= 2:
            killed_at = epoch
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None and killed_at < 6, "the run finished before it could be killed"
    assert not (out / "scores.npz").exists()
    resumed = torchrun(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed proxy" in (out / "track.log").read_text()
    got = load_scores(out / "scores.npz").scores
    want = load_scores(uninterrupted / "scores.npz").scores
    np.testing.assert_array_equal(got, want)


def single(out: Path, *extra: str, wait: bool = True):
    """The same `cldfast track` in one process."""
    cmd = [sys.executable, *TRACK, "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True,
                              text=True, timeout=300)
    return subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def committed_epochs(out: Path) -> int:
    """Epochs whose checkpoint is on disk (the manifest of several ranks, or one process's log)."""
    try:
        manifest = out / "checkpoints" / "proxy.pt.manifest.json"
        if manifest.exists():
            tag = json.loads(manifest.read_text())["tag"]  # epoch<E> or epoch<E>-batch<B>
            return int(tag.split("-")[0][len("epoch"):]) if tag.startswith("epoch") else 0
        log = (out / "track.log").read_text()
        return max([e for e in range(1, 7) if f"proxy epoch {e}/6:" in log], default=0)
    except (OSError, ValueError, KeyError):
        return 0


def sigterm_after_epoch_2(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and committed_epochs(out) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped"
    os.killpg(proc.pid, signal.SIGTERM)  # what a cluster scheduler sends before preempting
    proc.wait(timeout=120)
    assert not (out / "scores.npz").exists()
    assert 2 <= committed_epochs(out) < 6


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)], ids=["2-then-1", "1-then-2"])
def test_sigterm_and_resume_at_another_world_size(uninterrupted, tmp_path, first, then):
    """Elastic resume: the run stopped by SIGTERM after epoch 2 with `first` processes and
    resumed with `then` scores every training sample from as many differences as an
    uninterrupted run (its training differs with the world size, as in any DDP job)."""
    out = tmp_path / "elastic"
    sigterm_after_epoch_2(torchrun(out, wait=False) if first == 2 else single(out, wait=False), out)
    resumed = torchrun(out, "--resume") if then == 2 else single(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"written by {first} process(es), resumed with {then}" in (out / "track.log").read_text()
    got, want = load_scores(out / "scores.npz"), load_scores(uninterrupted / "scores.npz")
    np.testing.assert_array_equal(np.sort(got.train_indices), np.sort(want.train_indices))
    assert np.isfinite(got.scores).all()
    np.testing.assert_array_equal(got.extra["num_differences"], want.extra["num_differences"])
    assert got.metadata["world_size"] == then
    left = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert not [name for name in left if f"-of-{first}." in name and first > 1], left


def test_bench_under_torchrun_records_every_rank_batches(tmp_path):
    out = tmp_path / "bench"
    cmd = [*TORCHRUN, f"--master_port={free_port()}", "-m", "cldfast", "bench", "--dataset", "digits",
           "--epochs", "1", "--proxy-epochs", "3", "--batch-size", "64", "--lr", "0.05",
           "--methods", "cld,random,forgetting,aum", "--fractions", "0.3", "--seeds", "1",
           "--no-full", "--device", "cpu", "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tempfile.gettempdir(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = json.loads((out / "bench.json").read_text())
    assert {c["method"] for c in bench["cells"].values()} == {"cld", "random", "forgetting", "aum"}
    sf = load_scores(out / "scores.npz")
    # Rank 0's recorders saw the batches of both ranks: every training sample has an AUM.
    assert np.isfinite(sf.extra["aum"]).all() and sf.extra["aum"].size == sf.scores.size


@pytest.mark.parametrize("policy", ["cld", "infobatch"])
def test_pruned_training_under_torchrun(tmp_path, policy):
    """`torchrun -m cldfast train --prune` with 2 Gloo ranks: the ranks agree on every epoch's
    plan (a disagreement would deadlock DDP or break the saving), the saving reaches the
    target, and the CLD policy writes the run's scores (rank 0, all samples)."""
    out = tmp_path / "pruned"
    cmd = [*TORCHRUN, f"--master_port={free_port()}", "-m", "cldfast", "train", "--dataset",
           "digits", "--batch-size", "16", "--lr", "0.05", "--epochs", "6", "--quiet",
           "--device", "cpu", "--prune", policy, "--prune-saving", "0.3", "--out", str(out)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "train_metrics.json").read_text())
    assert m["world_size"] == 2 and abs(m["prune"]["saved"] - 0.3) < 0.08
    kept = [e["kept_fraction"] for e in m["history"]]
    assert kept[0] == 1.0 and kept[-1] == 1.0 and min(kept) < 0.8
    if policy == "cld":
        sf = load_scores(out / "train_scores.npz")
        assert sf.metadata["world_size"] == 2 and np.isfinite(sf.scores).mean() > 0.9
