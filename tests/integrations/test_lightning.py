"""CLDCallback inside a real Lightning Trainer: scores equal to a plain CLDTracker fed the same
eval-mode losses, resume from a Lightning checkpoint, and 2-process DDP on CPU (gloo)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from cldfast import CLDTracker  # noqa: E402
from cldfast.integrations.lightning import CLDCallback  # noqa: E402

N, Q, C, D = 96, 24, 3, 8


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N + Q, D, generator=g)
    y = (x[:, :C] + 0.7 * torch.randn(N + Q, C, generator=g)).argmax(1)
    # float64 throughout: the callback evaluates in other batches than the reference, and in
    # float32 a matrix product's last bits depend on the batch (BLAS blocking, thread count),
    # which moves CLD by up to ~1e-5 on samples whose loss barely changes.
    x = x.double()
    return x[:N], y[:N], x[N:], y[N:]


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, C)).double()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


class PlainTracker(pl.Callback):
    """The independent reference: a plain CLDTracker fed full-batch eval-mode losses."""

    def __init__(self, x, y, xv, yv):
        self.x, self.y, self.xv, self.yv = x, y, xv, yv
        self.tracker = None

    def setup(self, trainer, module, stage):
        # Built in each process: with ddp_spawn, tensors made before the spawn would be
        # shared memory between the ranks.
        self.tracker = CLDTracker(self.y, self.yv, distributed=False)

    def on_train_epoch_end(self, trainer, module):
        with torch.no_grad():
            was = module.training
            module.eval()
            self.tracker.record(torch.arange(N), F.cross_entropy(module(self.x), self.y, reduction="none"))
            self.tracker.record_validation(F.cross_entropy(module(self.xv), self.yv, reduction="none"))
            module.train(was)
        self.tracker.end_epoch()


def loaders(x, y, xv, yv):
    train = DataLoader(TensorDataset(x, y, torch.arange(N)), batch_size=16, shuffle=False)
    in_order = DataLoader(TensorDataset(x, y, torch.arange(N)), batch_size=32)
    val = DataLoader(TensorDataset(xv, yv, torch.arange(Q)), batch_size=10)
    return train, in_order, val


def trainer(epochs, callbacks, **kw):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=callbacks, **kw)


def test_callback_matches_a_plain_tracker_and_writes_scores(tmp_path):
    from cldfast.io import load_scores

    x, y, xv, yv = data()
    train, in_order, val = loaders(x, y, xv, yv)
    cb = CLDCallback(y, yv, train_eval_loader=in_order, val_loader=val,
                     scores_path=tmp_path / "scores.npz")
    ref = PlainTracker(x, y, xv, yv)
    trainer(5, [cb, ref], enable_checkpointing=False).fit(Net(), train)
    want = ref.tracker.scores().numpy()
    assert np.isfinite(want).all()
    np.testing.assert_allclose(cb.scores().numpy(), want, rtol=0, atol=1e-6)
    saved = load_scores(tmp_path / "scores.npz")
    np.testing.assert_allclose(saved.scores, want, rtol=0, atol=1e-6)
    assert saved.metadata["loss_source"] == "eval"


def test_resume_from_a_lightning_checkpoint_gives_identical_scores(tmp_path):
    x, y, xv, yv = data()
    train, in_order, val = loaders(x, y, xv, yv)
    full = CLDCallback(y, yv, train_eval_loader=in_order, val_loader=val)
    trainer(4, [full], enable_checkpointing=False).fit(Net(), train)

    first = CLDCallback(y, yv, train_eval_loader=in_order, val_loader=val)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(2, [first, ckpt]).fit(Net(), train)
    resumed = CLDCallback(y, yv, train_eval_loader=in_order, val_loader=val)
    trainer(4, [resumed], enable_checkpointing=False).fit(Net(), train,
                                                          ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.tracker.checkpoint == 4
    np.testing.assert_array_equal(resumed.scores().numpy(), full.scores().numpy())


def test_train_mode_records_training_step_outputs():
    x, y, xv, yv = data()
    train, _, val = loaders(x, y, xv, yv)

    class TrainMode(Net):
        def training_step(self, batch, batch_idx):
            xb, yb, idx = batch
            losses = F.cross_entropy(self(xb), yb, reduction="none")
            return {"loss": losses.mean(), "indices": idx, "per_sample_losses": losses}

    cb = CLDCallback(y, yv, val_loader=val, mode="train")
    trainer(3, [cb], enable_checkpointing=False).fit(TrainMode(), train)
    assert cb.tracker.checkpoint == 3
    assert np.isfinite(cb.scores().numpy()).all()  # 3 checkpoints: 2 differences per sample
    with pytest.raises(ValueError, match="train_eval_loader"):
        CLDCallback(y, yv, val_loader=val)


class DDPNet(Net):
    def train_dataloader(self):
        x, y, _, _ = data()
        return DataLoader(TensorDataset(x, y, torch.arange(N)), batch_size=16, shuffle=False)


class ShardedCLD(CLDCallback):
    """Each rank evaluates its shard of the training split and of V, in other batches than
    the plain reference; DistributedSampler pads V's 23 samples to 24 with a duplicate."""

    def setup(self, trainer, module, stage):
        from torch.utils.data import DistributedSampler

        x, y, xv, yv = data()
        rank, world = trainer.global_rank, trainer.world_size
        self.train_eval_loader = DataLoader(
            TensorDataset(x, y, torch.arange(N)), batch_size=20,
            sampler=DistributedSampler(range(N), num_replicas=world, rank=rank, shuffle=False))
        self.val_loader = DataLoader(
            TensorDataset(xv[:Q - 1], yv[:Q - 1], torch.arange(Q - 1)), batch_size=7,
            sampler=DistributedSampler(range(Q - 1), num_replicas=world, rank=rank, shuffle=False))
        super().setup(trainer, module, stage)


class SaveScores(pl.Callback):
    def __init__(self, out_dir):
        self.out_dir = out_dir

    def on_train_end(self, trainer, module):
        cb = next(c for c in trainer.callbacks if isinstance(c, CLDCallback))
        ref = next(c for c in trainer.callbacks if isinstance(c, PlainTracker))
        np.save(f"{self.out_dir}/cb{trainer.global_rank}.npy", cb.scores().numpy())
        np.save(f"{self.out_dir}/ref{trainer.global_rank}.npy", ref.tracker.scores().numpy())


def _ddp_fit(out_dir):
    x, y, xv, yv = data()
    # The reference sees Q - 1 validation samples (23: odd, so DistributedSampler pads one).
    cb = ShardedCLD(y, yv[:Q - 1], train_eval_loader=[], val_loader=[])
    ref = PlainTracker(x, y, xv[:Q - 1], yv[:Q - 1])
    pl.Trainer(max_epochs=4, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
               enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
               callbacks=[cb, ref, SaveScores(out_dir)]).fit(DDPNet())


@pytest.mark.slow
def test_ddp_two_processes_match_a_plain_tracker(tmp_path):
    _ddp_fit(str(tmp_path))
    for rank in range(2):
        got, want = np.load(tmp_path / f"cb{rank}.npy"), np.load(tmp_path / f"ref{rank}.npy")
        assert np.isfinite(want).all()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "cb0.npy"), np.load(tmp_path / "cb1.npy"))


def test_pruning_sampler_inside_lightning():
    """Dynamic pruning in a Lightning Trainer: Lightning calls the sampler's set_epoch, every
    epoch trains on the pruner's plan, and InfoBatch is fed the batches' logits."""
    from cldfast.training import InfoBatchPruner, PruningSampler

    x, y, _, _ = data()
    pruner = InfoBatchPruner(N, 6, saving=0.3, seed=2)
    sampler = PruningSampler(pruner)
    seen: dict[int, list] = {}
    plans: dict[int, np.ndarray] = {}

    class Pruned(Net):
        def training_step(self, batch, batch_idx):
            xb, yb, idx = batch
            logits = self(xb)
            losses = F.cross_entropy(logits, yb, reduction="none")
            pruner.on_batch(idx, logits.detach(), yb, self.current_epoch)
            seen.setdefault(self.current_epoch, []).append(idx)
            plans.setdefault(self.current_epoch, pruner.plan(self.current_epoch).copy())
            return (losses * pruner.loss_weights(idx, losses.device).to(losses.dtype)).mean()

        def train_dataloader(self):
            return DataLoader(TensorDataset(x, y, torch.arange(N)), batch_size=16, sampler=sampler)

    trainer(6, [], enable_checkpointing=False, use_distributed_sampler=False).fit(Pruned())
    assert sorted(seen) == list(range(6))
    for epoch, parts in seen.items():
        np.testing.assert_array_equal(np.sort(torch.cat(parts).numpy()), plans[epoch])
    kept = [h["kept"] for h in pruner.history]
    assert kept[0] == N and kept[-1] == N and min(kept) < N  # epoch 0 and the last are full
    assert 0.15 < pruner.saved < 0.35


def test_two_callbacks_share_a_trainer_and_resume_by_state_key(tmp_path):
    """Per-class and global alignment side by side: distinct state keys, each restored from
    the Lightning checkpoint into its own callback."""
    x, y, xv, yv = data()
    train, in_order, val = loaders(x, y, xv, yv)

    def pair():
        return (CLDCallback(y, yv, train_eval_loader=in_order, val_loader=val),
                CLDCallback(y, yv, train_eval_loader=in_order, val_loader=val, per_class=False))

    straight = pair()
    trainer(4, list(straight), enable_checkpointing=False).fit(Net(), train)
    assert straight[0].state_key != straight[1].state_key
    first = pair()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(2, [*first, ckpt]).fit(Net(), train)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    assert {first[0].state_key, first[1].state_key} <= set(saved)
    resumed = pair()
    trainer(4, list(resumed), enable_checkpointing=False).fit(
        Net(), train, ckpt_path=str(tmp_path / "last.ckpt"))
    for got, want in zip(resumed, straight):
        np.testing.assert_allclose(got.scores().numpy(), want.scores().numpy(), rtol=0, atol=1e-12)
    assert not np.allclose(resumed[0].scores().numpy(), resumed[1].scores().numpy())
    # A third callback of the same settings needs a name of its own.
    named = CLDCallback(y, yv, train_eval_loader=in_order, val_loader=val, name="copy")
    assert named.state_key not in {straight[0].state_key, straight[1].state_key}


def test_resume_without_the_callback_state_is_refused(tmp_path):
    x, y, xv, yv = data()
    train, in_order, val = loaders(x, y, xv, yv)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(2, [ckpt]).fit(Net(), train)  # no CLD callback: its checkpoint has no CLD state
    cb = CLDCallback(y, yv, train_eval_loader=in_order, val_loader=val)
    with pytest.raises(RuntimeError, match="holds no CLD tracker state"):
        trainer(4, [cb], enable_checkpointing=False).fit(Net(), train,
                                                         ckpt_path=str(tmp_path / "last.ckpt"))


def test_a_callback_tracks_one_run():
    x, y, xv, yv = data()
    train, in_order, val = loaders(x, y, xv, yv)
    cb = CLDCallback(y, yv, train_eval_loader=in_order, val_loader=val)
    trainer(2, [cb], enable_checkpointing=False).fit(Net(), train)
    with pytest.raises(RuntimeError, match="already tracked a training run"):
        trainer(2, [cb], enable_checkpointing=False).fit(Net(), train)
