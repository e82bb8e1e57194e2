"""One CLD-tracked training job for the resume tests (tests/integrations/test_resume.py),
run as a script in a fresh process (or under torchrun): a Hugging Face Trainer or a
Lightning Trainer over a float64 model, ``--epochs`` epochs, stopped after ``--stop-after`` epochs or
resumed from the framework's own checkpoint. Writes the callback's scores, differences per
sample and checkpoints closed to ``OUT/result-<rank>.npz``."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))


def hf_job(out: str, epochs: int, every: int, stop_after: int | None, resume: bool) -> tuple:
    import transformers

    import test_huggingface as T
    from cldfast.integrations.huggingface import CLDTrainerCallback

    model, inputs, labels = T.text_task()
    model = model.double()
    tr, va = T.split(inputs, labels)
    cb = CLDTrainerCallback(labels[:T.N], labels[T.N:], train_eval_dataset=tr, val_dataset=va,
                            batch_size=24, every_n_epochs=every,
                            scores_path=os.path.join(out, "scores.npz"))

    class StopAfter(transformers.TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if stop_after is not None and round(state.epoch) >= stop_after:
                control.should_training_stop = True

    args = transformers.TrainingArguments(
        output_dir=os.path.join(out, "hf"), num_train_epochs=epochs, per_device_train_batch_size=16,
        learning_rate=5e-3, report_to=[], save_strategy="epoch", logging_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=tr,
                                   callbacks=[cb, StopAfter()])
    trainer.train(resume_from_checkpoint=True if resume else None)
    history = [e for e in trainer.state.log_history
               if "cld/checkpoints" in e and "cld/score_mean" not in e]  # tracked epochs
    return cb, history


def lightning_job(out: str, epochs: int, every: int, stop_after: int | None, resume: bool) -> tuple:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    import test_lightning as L
    from cldfast.integrations.lightning import CLDCallback

    x, y, xv, yv = L.data()

    class Sharded(CLDCallback):
        """Loaders built once the process group exists: each rank its padded shard."""

        def setup(self, trainer, module, stage):
            rank, world = trainer.global_rank, trainer.world_size

            def loader(*tensors, batch):
                n = tensors[0].shape[0]
                sampler = DistributedSampler(range(n), num_replicas=world, rank=rank,
                                             shuffle=False) if world > 1 else None
                return DataLoader(TensorDataset(*tensors, torch.arange(n)), batch_size=batch,
                                  sampler=sampler)
            self.train_eval_loader = loader(x, y, batch=20)
            self.val_loader = loader(xv, yv, batch=7)
            super().setup(trainer, module, stage)

    class StopAfter(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if stop_after is not None and trainer.current_epoch + 1 >= stop_after:
                trainer.should_stop = True

    class Net(L.Net):
        def train_dataloader(self):
            return DataLoader(TensorDataset(x, y, torch.arange(L.N)), batch_size=16, shuffle=False)

    cb = Sharded(y, yv, train_eval_loader=[], val_loader=[], every_n_epochs=every,
                 scores_path=os.path.join(out, "scores.npz"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), save_last=True)
    logger = pl.loggers.CSVLogger(os.path.join(out, "logs"), name="", version="run")
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=world,
                         strategy="ddp" if world > 1 else "auto", logger=logger,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[cb, ckpt, StopAfter()])
    trainer.fit(Net(), ckpt_path=os.path.join(out, "ckpt", "last.ckpt") if resume else None)
    return cb, []


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("framework", choices=["hf", "lightning"])
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--stop-after", type=int)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    job = hf_job if a.framework == "hf" else lightning_job
    cb, history = job(a.out, a.epochs, a.every, a.stop_after, a.resume)
    rank = int(os.environ.get("RANK", "0"))
    np.savez(os.path.join(a.out, f"result-{rank}.npz"), scores=cb.scores().numpy(),
             ndiff=cb.tracker.num_differences().numpy(), checkpoints=cb.tracker.checkpoint,
             logged=np.array([e["cld/checkpoints"] for e in history]))


if __name__ == "__main__":
    main()
