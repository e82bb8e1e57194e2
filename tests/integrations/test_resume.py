"""Resume through each framework's own checkpoints: a 4-epoch run straight through and the
same run stopped after epoch 2 and resumed in a new process, with new objects, give the same
CLD scores (float64 model: <= 1e-6) and differences per sample; with every_n_epochs=2 too;
and under torchrun with 2 Gloo processes. A resume from a checkpoint without the callback's
state is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("lightning")

JOB = str(Path(__file__).with_name("resume_job.py"))


def run_job(out: Path, *args: str, world: int = 1) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={world}"] if world > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*launcher, JOB, *args], cwd=out, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc


def result(out: Path, rank: int = 0) -> dict:
    return dict(np.load(out / f"result-{rank}.npz"))


def epochs_for(every: int) -> int:
    return 4 if every == 1 else 6  # at least 3 tracked epochs: 2 differences per sample


def straight_and_resumed(tmp_path: Path, framework: str, every: int, world: int = 1):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    for out, extra in ((straight, []), (stopped, ["--stop-after", "2"]),
                       (stopped, ["--resume"])):
        proc = run_job(out, framework, str(out), "--every", str(every),
                       "--epochs", str(epochs_for(every)), *extra, world=world)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return straight, stopped


def check_equal(straight: Path, stopped: Path, every: int, world: int = 1) -> None:
    want = result(straight)
    assert int(want["checkpoints"]) == epochs_for(every) // every
    assert np.isfinite(want["scores"]).all()
    for rank in range(world):
        got = result(stopped, rank)
        assert int(got["checkpoints"]) == int(want["checkpoints"])
        np.testing.assert_array_equal(got["ndiff"], want["ndiff"])
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("every", [1, 2])
def test_hugging_face_resume_from_checkpoint_dir(tmp_path, every):
    straight, stopped = straight_and_resumed(tmp_path, "hf", every)
    check_equal(straight, stopped, every)
    # The tracker's state went into every checkpoint-<step> directory.
    folders = sorted(p for p in (stopped / "hf").iterdir() if p.name.startswith("checkpoint-"))
    assert len(folders) == epochs_for(every) and all((f / "cld_tracker.pt").exists() for f in folders)
    # Each tracked epoch is in the Trainer's log history (trainer_state.json).
    np.testing.assert_array_equal(result(straight)["logged"], np.arange(1, epochs_for(every) // every + 1))


@pytest.mark.parametrize("every", [1, 2])
def test_lightning_resume_from_checkpoint(tmp_path, every):
    straight, stopped = straight_and_resumed(tmp_path, "lightning", every)
    check_equal(straight, stopped, every)
    logged = (straight / "logs" / "run" / "metrics.csv").read_text()
    assert "cld/checkpoints" in logged and "cld/score_mean" in logged


def test_hugging_face_resume_without_tracker_state_is_refused(tmp_path):
    out = tmp_path / "run"
    assert run_job(out, "hf", str(out), "--stop-after", "2").returncode == 0
    for folder in (out / "hf").iterdir():
        (folder / "cld_tracker.pt").unlink(missing_ok=True)
    proc = run_job(out, "hf", str(out), "--resume")
    assert proc.returncode != 0
    assert "holds no CLD tracker state" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["hf", "lightning"])
def test_resume_under_torchrun_two_processes(tmp_path, framework):
    straight, stopped = straight_and_resumed(tmp_path, framework, 1, world=2)
    check_equal(straight, stopped, 1, world=2)
