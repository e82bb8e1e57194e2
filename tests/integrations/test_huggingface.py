"""CLDTrainerCallback inside a real Hugging Face Trainer, on tiny randomly initialised
models (no download): scores equal to a plain CLDTracker fed the same eval-mode losses, for
text (BERT) and image (ViT) classification, and train-mode losses through CLDTrainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from cldfast import CLDTracker  # noqa: E402
from cldfast.integrations.huggingface import CLDTrainer, CLDTrainerCallback  # noqa: E402

N, Q, C = 64, 16, 3


class DictData(torch.utils.data.Dataset):
    def __init__(self, inputs: dict, labels: torch.Tensor):
        self.inputs, self.labels = inputs, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.inputs.items()}
        item["labels"] = self.labels[i]
        item["cld_index"] = torch.tensor(i)
        return item


def text_task():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 40, (N + Q, 12), generator=g)
    labels = (ids[:, 0] % C)  # learnable from the first token
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, num_labels=C,
                                  max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    mask = torch.ones_like(ids)
    return model, {"input_ids": ids, "attention_mask": mask}, labels


def image_task():
    g = torch.Generator().manual_seed(1)
    px = torch.randn(N + Q, 3, 16, 16, generator=g)
    labels = torch.randint(0, C, (N + Q,), generator=g)
    px[torch.arange(N + Q), labels] += 1.0
    cfg = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=16,
                                 num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 num_labels=C)
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(cfg), {"pixel_values": px}, labels


class PlainReference(transformers.TrainerCallback):
    """Independent reference: full-batch eval-mode losses into a plain tracker."""

    def __init__(self, inputs, labels):
        self.inputs, self.labels = inputs, labels
        self.tracker = CLDTracker(labels[:N], labels[N:], distributed=False)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        was = model.training
        model.eval()
        with torch.no_grad():
            logits = model(**self.inputs).logits
        model.train(was)
        losses = F.cross_entropy(logits, self.labels, reduction="none")
        self.tracker.record(torch.arange(N), losses[:N])
        self.tracker.record_validation(losses[N:].double())
        self.tracker.end_epoch()


def split(inputs, labels):
    tr = DictData({k: v[:N] for k, v in inputs.items()}, labels[:N])
    va = DictData({k: v[N:] for k, v in inputs.items()}, labels[N:])
    return tr, va


def args(tmp_path, **kw):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=4, per_device_train_batch_size=16,
        learning_rate=5e-3, report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0, **kw)


@pytest.mark.parametrize("task", [text_task, image_task], ids=["text-bert", "image-vit"])
def test_callback_matches_a_plain_tracker(tmp_path, task):
    from cldfast.io import load_scores

    model, inputs, labels = task()
    tr, va = split(inputs, labels)
    cb = CLDTrainerCallback(labels[:N], labels[N:], train_eval_dataset=tr, val_dataset=va,
                            batch_size=24, scores_path=tmp_path / "scores.npz")
    ref = PlainReference(inputs, labels)
    transformers.Trainer(model=model, args=args(tmp_path), train_dataset=tr,
                         callbacks=[cb, ref]).train()
    want = ref.tracker.scores().numpy()
    assert cb.tracker.checkpoint == 4 and np.isfinite(want).all()
    np.testing.assert_allclose(cb.scores().numpy(), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(load_scores(tmp_path / "scores.npz").scores, want, rtol=0, atol=1e-5)


def test_train_mode_through_cld_trainer(tmp_path):
    model, inputs, labels = text_task()
    tr, va = split(inputs, labels)
    cb = CLDTrainerCallback(labels[:N], labels[N:], val_dataset=va, mode="train")
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        CLDTrainer(model=model, args=args(tmp_path), train_dataset=tr, callbacks=[cb])
    trainer = CLDTrainer(model=model, args=args(tmp_path, remove_unused_columns=False),
                         train_dataset=tr, callbacks=[cb])
    trainer.train()
    assert cb.tracker.checkpoint == 4
    assert (cb.tracker.num_differences().numpy() == 3).all()  # every sample, every epoch
    assert np.isfinite(cb.scores().numpy()).all()


DDP_SCRIPT = '''
import os, sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_huggingface as T
import transformers
from cldfast.integrations.huggingface import CLDTrainerCallback

# 65 training samples in batches of 16: unpadded shards of 33 and 32 would give the ranks 3
# and 2 batches, pairing one rank's validation gather with the other's training gather.
T.N = 65
model, inputs, labels = T.text_task()
tr, va = T.split(inputs, labels)
cb = CLDTrainerCallback(labels[:T.N], labels[T.N:], train_eval_dataset=tr, val_dataset=va,
                        batch_size=16)
ref = T.PlainReference(inputs, labels)
args = transformers.TrainingArguments(
    output_dir={out!r}, num_train_epochs=3, per_device_train_batch_size=8, learning_rate=5e-3,
    report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    seed=0, dataloader_num_workers=0, ddp_backend="gloo")
transformers.Trainer(model=model, args=args, train_dataset=tr, callbacks=[cb, ref]).train()
rank = int(os.environ["RANK"])
np.save(f"{out}/cb{{rank}}.npy", cb.scores().numpy())
np.save(f"{out}/ref{{rank}}.npy", ref.tracker.scores().numpy())
'''


@pytest.mark.slow
def test_two_processes_under_torchrun(tmp_path):
    """Each process evaluates its padded share (equal batch counts with an odd N); the
    all-gathered tracker equals the plain one."""
    import os
    import subprocess
    import sys

    script = tmp_path / "fit.py"
    script.write_text(DDP_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path)))
    # --standalone: a local rendezvous on a free port (--master_port 0 never rendezvouses)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", str(script)], check=True, cwd=tmp_path,
                   capture_output=True, timeout=300)
    for rank in range(2):
        want = np.load(tmp_path / f"ref{rank}.npy")
        assert np.isfinite(want).all()
        np.testing.assert_allclose(np.load(tmp_path / f"cb{rank}.npy"), want, rtol=0, atol=1e-5)


def test_metrics_reach_the_reporting_callbacks_after_attach(tmp_path):
    """A reporter registered before the CLD callback (as report_to integrations are) receives
    the cld/* metrics once the callback is attached in front."""
    model, inputs, labels = text_task()
    tr, va = split(inputs, labels)

    class Reporter(transformers.TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs))

    reporter = Reporter()
    cb = CLDTrainerCallback(labels[:N], labels[N:], train_eval_dataset=tr, val_dataset=va)
    trainer = transformers.Trainer(model=model, args=args(tmp_path), train_dataset=tr,
                                   callbacks=[reporter, cb])
    cb.attach(trainer).train()
    logged = [e["cld/checkpoints"] for e in reporter.seen if "cld/checkpoints" in e]
    assert logged[:4] == [1.0, 2.0, 3.0, 4.0]
    assert any("cld/score_mean" in e for e in trainer.state.log_history)
