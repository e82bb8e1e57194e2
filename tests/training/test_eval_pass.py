"""The eval-mode pass behind the default estimator: the fast path gives the losses a plain
per-sample loop gives, and tracking at subsampled checkpoints equals replaying the
subsampled trajectories through the independent numpy reference (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cldfast import CLDTracker
from cldfast.data import InMemoryImageDataset, load_dataset, split_train_val
from cldfast.training.models import build_model
from cldfast.pipeline import DataSpec, track, tracked_epochs
from cldfast.training import Recipe, Tracking, fit, predict

from numpy_reference import cld_reference_dense


def _plain_losses(model: torch.nn.Module, dataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One item at a time through ``dataset[i]``, contiguous layout, no batching."""
    model.eval()
    losses, correct = [], []
    with torch.no_grad():
        for i in indices:
            x, y = dataset[int(i)]
            out = model(x.unsqueeze(0).contiguous())
            losses.append(float(F.cross_entropy(out, torch.tensor([y]))))
            correct.append(int(out.argmax(1)) == y)
    return np.array(losses), np.array(correct)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trained_model(bundle, steps: int = 30) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("small-cnn", bundle.num_classes, bundle.input_shape)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    idx = torch.arange(len(bundle.train_targets))
    for s in range(steps):  # a few steps, so that BatchNorm's running statistics are not trivial
        b = idx[(s * 64) % idx.numel():][:64]
        x = torch.stack([bundle.train[int(i)][0] for i in b])
        loss = F.cross_entropy(model(x), torch.as_tensor(bundle.train_targets[b.numpy()]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("batch_size", [1, 37, 512])
def test_fast_eval_pass_equals_plain_per_sample_loop(digits, batch_size):
    model = _trained_model(digits)
    rng = np.random.default_rng(0)
    indices = rng.permutation(len(digits.train_targets))[:300]  # out of order, on purpose
    ref_loss, ref_correct = _plain_losses(model, digits.train_eval, indices)
    recipe = Recipe(device="cpu", eval_batch_size=batch_size)  # channels_last on: the fast path
    losses, correct = predict(model, digits.train_eval, indices, recipe, torch.device("cpu"),
                              progress=False)
    np.testing.assert_allclose(losses.numpy(), ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(correct.numpy(), ref_correct)
    # The model is handed back in its own layout and mode-independent state.
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize("onednn", [True, False])
def test_onednn_eval_pass_is_used_and_equals_plain_loop(digits, onednn, monkeypatch):
    """On the CPU the small CNN's eval pass runs through its oneDNN inference copy (unless
    switched off) and still gives the plain per-sample loop's losses."""
    from cldfast.training import evaluation

    calls = []
    real = evaluation._onednn_forward
    monkeypatch.setattr(evaluation, "_onednn_forward",
                        lambda fast, x: calls.append(x.shape[0]) or real(fast, x))
    model = _trained_model(digits)
    indices = np.arange(200)
    ref_loss, ref_correct = _plain_losses(model, digits.train_eval, indices)
    recipe = Recipe(device="cpu", eval_batch_size=64, eval_onednn=onednn)
    losses, correct = predict(model, digits.train_eval, indices, recipe, torch.device("cpu"),
                              progress=False)
    np.testing.assert_allclose(losses.numpy(), ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(correct.numpy(), ref_correct)
    assert sum(calls) == (200 if onednn else 0)
    # The caller's model is untouched: still a dense model that trains.
    assert not any(p.is_mkldnn for p in model.parameters())
    model.train()
    F.cross_entropy(model(digits.train[0][0][None]), torch.tensor([0])).backward()


class _CircularCNN(torch.nn.Module):
    """Circular padding, which oneDNN's inference convolution does not implement: its copy
    computes something else, and the first-batch check must catch it."""

    def __init__(self, classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular")
        self.head = torch.nn.Linear(8, classes)

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1), 1))


class _ViewCNN(torch.nn.Module):
    """``view`` on the feature map, which oneDNN's blocked tensors refuse."""

    def __init__(self, classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, stride=2)
        self.head = torch.nn.LazyLinear(classes)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.head(h.view(h.shape[0], -1))


@pytest.mark.parametrize("make", [_CircularCNN, _ViewCNN])
def test_onednn_copy_that_fails_or_disagrees_falls_back_to_plain_forward(digits, make, caplog):
    torch.manual_seed(0)
    model = make(digits.num_classes)
    model(digits.train[0][0][None])  # materialise lazy layers
    indices = np.arange(150)
    ref_loss, ref_correct = _plain_losses(model, digits.train_eval, indices)
    for _ in range(2):  # the second pass reuses the decision of the first
        losses, correct = predict(model, digits.train_eval, indices,
                                  Recipe(device="cpu", eval_batch_size=64), torch.device("cpu"),
                                  progress=False)
        np.testing.assert_allclose(losses.numpy(), ref_loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(correct.numpy(), ref_correct)
    from cldfast.training import evaluation

    assert model in evaluation._ONEDNN_REFUSED
    if make is _CircularCNN:  # it ran, and was refused for what it computed
        assert "differ" in evaluation._ONEDNN_REFUSED[model]
        assert "disagrees with the model" in caplog.text


def test_onednn_copy_is_refused_despite_a_non_finite_logit(digits, caplog):
    """A class whose head bias is -inf gives -inf logits in both forwards: the copy's first
    batch then differs by NaN (-inf - -inf), which a plain ``max |out - ref| > tol`` accepts.
    The circular-padding copy computes something else and must still be refused."""
    from cldfast.training import evaluation

    torch.manual_seed(0)
    model = _CircularCNN(digits.num_classes)
    with torch.no_grad():
        model.head.bias[3] = float("-inf")
    indices = np.arange(150)
    ref_loss, ref_correct = _plain_losses(model, digits.train_eval, indices)
    assert np.isinf(ref_loss).any() and np.isfinite(ref_loss).any()  # class 3: loss +inf
    losses, correct = predict(model, digits.train_eval, indices,
                              Recipe(device="cpu", eval_batch_size=64), torch.device("cpu"),
                              progress=False)
    np.testing.assert_allclose(losses.numpy(), ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(correct.numpy(), ref_correct)
    assert "differ" in evaluation._ONEDNN_REFUSED[model]
    assert "disagrees with the model" in caplog.text


def test_onednn_logit_check_compares_finite_values_and_non_finite_positions():
    from cldfast.training.evaluation import _logits_disagreement

    inf, nan = float("inf"), float("nan")
    ref = torch.tensor([[1.0, -inf, 2.0], [nan, inf, 0.5]])
    assert _logits_disagreement(ref.clone(), ref) is None
    assert _logits_disagreement(ref + 1e-6, ref) is None  # rounding of the finite values
    assert _logits_disagreement(ref + 1.0, ref) is not None  # the finite values differ
    for i, j, v in [(0, 1, inf), (0, 1, 0.0), (1, 0, 0.0), (1, 1, -inf), (0, 0, nan)]:
        out = ref.clone()
        out[i, j] = v
        assert _logits_disagreement(out, ref) is not None, (i, j, v)
    assert _logits_disagreement(ref[:1], ref) is not None


def test_fast_eval_pass_through_a_dataloader_dataset(digits):
    """A dataset without a batched path (here: a plain wrapper) goes through the loader and
    still gives the plain loop's losses."""

    class Wrapped(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            return self.inner[i]

    model = _trained_model(digits)
    indices = np.arange(0, 400, 3)
    ref_loss, _ = _plain_losses(model, digits.train_eval, indices)
    losses, _ = predict(model, Wrapped(digits.train_eval), indices,
                        Recipe(device="cpu", eval_batch_size=64), torch.device("cpu"), progress=False)
    np.testing.assert_allclose(losses.numpy(), ref_loss, rtol=1e-5, atol=1e-6)


def test_batch_equals_stacked_items(digits):
    ds = digits.train_eval
    idx = torch.tensor([5, 0, 77, 5, 1000])
    x, y = ds.batch(idx)
    ref = torch.stack([ds[int(i)][0] for i in idx])
    assert torch.equal(x, ref)
    assert y.tolist() == [ds[int(i)][1] for i in idx]


def test_batch_refuses_augmented_views(digits):
    aug = digits.train_eval.with_augmentation(flip=True, crop_padding=0)
    with pytest.raises(ValueError, match="un-augmented"):
        aug.batch(torch.tensor([0, 1]))


def test_predict_names_out_of_range_index(digits):
    model = _trained_model(digits, steps=1)
    with pytest.raises(IndexError, match="outside"):
        predict(model, digits.train_eval, np.array([0, 10**6]), Recipe(device="cpu"),
                torch.device("cpu"), progress=False)


class _RecordingTracker(CLDTracker):
    """A CLDTracker that also keeps every loss it is given, per checkpoint."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_rows: list[np.ndarray] = []
        self.val_rows: list[np.ndarray] = []
        self._row: np.ndarray | None = None

    def record(self, positions, losses=None, **kw):
        if self._row is None:
            self._row = np.full(self.num_samples, np.nan)
        self._row[np.asarray(positions)] = np.asarray(losses, dtype=np.float64)
        return super().record(positions, losses, **kw)

    def record_validation(self, losses, positions=None):
        v = np.asarray(losses, dtype=np.float64)
        row = np.full(v.shape[0] if positions is None else len(self._val_labels_np), np.nan)
        row[np.arange(v.shape[0]) if positions is None else np.asarray(positions)] = v
        self.val_rows.append(row)
        return super().record_validation(losses, positions)

    def end_epoch(self):
        self.train_rows.append(self._row)
        self._row = None
        return super().end_epoch()


@pytest.mark.parametrize("train_channels_last", [None, False])
def test_subsampled_tracking_equals_replaying_subsampled_trajectories(digits, train_channels_last):
    """Eval-mode tracking at every 2nd epoch of a 7-epoch proxy (epochs 1, 3, 5, 7) gives the
    reference CLD of the every-epoch trajectories of the same run, rows 0, 2, 4, 6. With
    ``train_channels_last=False`` the eval pass converts the model's layout and back between
    training epochs."""
    train_idx, val_idx = split_train_val(digits.train_targets, 0.1, 0)
    labels, val_labels = digits.train_targets[train_idx], digits.train_targets[val_idx]
    recipe = Recipe(epochs=7, batch_size=64, lr=0.05, device="cpu",
                    train_channels_last=train_channels_last)

    full = _RecordingTracker(labels, val_labels, num_classes=digits.num_classes)
    full._val_labels_np = val_labels
    fit(digits, train_idx, "small-cnn", recipe, tracking=Tracking(full, "eval", val_idx, list(range(7))),
        evaluate_test=False, progress=False)
    train_rows, val_rows = np.stack(full.train_rows), np.stack(full.val_rows)  # [7, N], [7, Q]
    assert np.isfinite(train_rows).all() and np.isfinite(val_rows).all()

    chosen = tracked_epochs(7, None, 2)
    assert chosen == [0, 2, 4, 6]
    sub = CLDTracker(labels, val_labels, num_classes=digits.num_classes)
    fit(digits, train_idx, "small-cnn", recipe, tracking=Tracking(sub, "eval", val_idx, chosen),
        evaluate_test=False, progress=False)
    expected = cld_reference_dense(train_rows[chosen], val_rows[chosen], labels, val_labels)
    got = sub.scores().double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    # And it is not simply the every-epoch score (the subsampling has an effect).
    every = cld_reference_dense(train_rows, val_rows, labels, val_labels)
    assert np.abs(every - expected).max() > 1e-3


@pytest.fixture(scope="module")
def six_epochs(digits):
    """The every-epoch eval-mode trajectories of one 6-epoch proxy: (recipe, labels,
    val_labels, train rows [6, N], validation rows [6, Q])."""
    train_idx, val_idx = split_train_val(digits.train_targets, 0.1, 0)
    labels, val_labels = digits.train_targets[train_idx], digits.train_targets[val_idx]
    recipe = Recipe(epochs=6, batch_size=64, lr=0.05, device="cpu")
    full = _RecordingTracker(labels, val_labels, num_classes=digits.num_classes)
    full._val_labels_np = val_labels
    fit(digits, train_idx, "small-cnn", recipe, tracking=Tracking(full, "eval", val_idx, list(range(6))),
        evaluate_test=False, progress=False)
    return recipe, labels, val_labels, np.stack(full.train_rows), np.stack(full.val_rows)


def test_first_half_tracking_equals_replaying_first_half(digits, six_epochs, tmp_path):
    """``track_epochs``: the proxy stops there, and the scores are those of the first rows."""
    recipe, labels, val_labels, rows, val_rows = six_epochs
    sf, _ = track(digits, tmp_path, recipe=recipe, track_epochs=3, progress=False)
    expected = cld_reference_dense(rows[:3], val_rows[:3], labels, val_labels)
    np.testing.assert_allclose(sf.scores, expected, rtol=0, atol=1e-9)


def test_track_from_leaves_out_the_first_differences(digits, six_epochs, tmp_path):
    """``track_from=2``: the first checkpoint is the end of epoch 3, so CLD is the reference of
    the trajectories' rows 2.. of the same run, which differs from the every-epoch score; the
    scores file names the checkpoints."""
    recipe, labels, val_labels, rows, val_rows = six_epochs
    sf, _ = track(digits, tmp_path, recipe=recipe, track_from=2, progress=False)
    expected = cld_reference_dense(rows[2:], val_rows[2:], labels, val_labels)
    np.testing.assert_allclose(sf.scores, expected, rtol=0, atol=1e-9)
    every = cld_reference_dense(rows, val_rows, labels, val_labels)
    assert np.abs(every - expected).max() > 1e-3
    assert sf.metadata["tracked_epochs"] == [3, 4, 5, 6]


def test_tracked_epochs_track_from_combinations_and_errors():
    assert tracked_epochs(10, None, 1, 3) == [3, 4, 5, 6, 7, 8, 9]
    assert tracked_epochs(10, 8, 2, 2) == [3, 5, 7]  # every 2nd of the first 8, counted back
    assert tracked_epochs(10, None, 3, 0) == [0, 3, 6, 9]
    for bad in (-1, 10):
        with pytest.raises(ValueError, match=rf"track_from must be in \[0, 9\].*got {bad}"):
            tracked_epochs(10, None, 1, bad)


def test_pipeline_track_defaults_to_eval_mode(digits, tmp_path):
    sf, metrics = track(digits, tmp_path, recipe=Recipe(epochs=3, batch_size=64, device="cpu"),
                        progress=False)
    assert sf.metadata["loss_source"] == "eval"
    assert metrics["extra_forward_passes_over_train"] == 3


def test_cli_track_defaults_to_eval_mode(tmp_path):
    from cldfast.cli import main
    from cldfast.io import load_scores

    assert main(["track", "--dataset", "digits", "--epochs", "3", "--batch-size", "64", "--quiet",
                 "--out", str(tmp_path)]) == 0
    assert load_scores(tmp_path / "scores.npz").metadata["loss_source"] == "eval"


def test_run_table_reports_mean_std_and_per_seed_differences():
    from cldfast.pipeline.report import run_table as _result_table

    acc = {"full": [0.90, 0.92], "cld_top_0.1": [0.80, 0.84], "random_0.1": [0.81, 0.82],
           "cld_zero_0.1": [0.70, 0.71], "cld_bottom_0.1": [0.60, 0.66]}
    results = {k: {"samples": 10, "accuracies": v, "test_accuracy": float(np.mean(v)),
                   "test_accuracy_std": float(np.std(v, ddof=1))} for k, v in acc.items()}
    table = _result_table(results, [0.1], 0.1, seeds=2, loss_source="eval")
    assert f"{100 * np.mean(acc['cld_top_0.1']):.2f} ± {100 * np.std(acc['cld_top_0.1'], ddof=1):.2f} %" in table
    assert "+0.50 (-1.00, +2.00)" in table  # mean and per-seed CLD - random, in points
    assert "eval mode, the paper's CLD" in table and "2 retraining seed(s)" in table
    one = {k: {**v, "accuracies": v["accuracies"][:1]} for k, v in results.items()}
    single = _result_table(one, [0.1], 0.1, seeds=1, loss_source="train")
    assert "(1 seed)" in single and "noise" in single and "approximation" in single
