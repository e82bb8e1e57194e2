"""Training-loop overhead of CLD tracking: one training step with and without record().

For each model, variants of the same training step (forward, cross-entropy, backward,
SGD step with momentum, Nesterov and weight decay) on a fixed synthetic batch:

  plain            loss = F.cross_entropy(out, y)
  plain, 2nd copy  the same again (an A/A control: how far two identical steps drift apart)
  record(losses)   losses = F.cross_entropy(out, y, reduction="none");
                   tracker.record(idx, losses); loss = losses.mean()
  record(logits=)  losses = tracker.record(idx, logits=out, targets=y); loss = losses.mean()
                   (the fused cross-entropy kernel that cldfast's own loop uses)

Each variant trains its own copy of the same initial model; steps are interleaved (one step
of each variant per round, the order rotated every round) so that machine noise hits all
variants alike. Reported: median step time per variant, the ratio of medians, and the median
(with interquartile range) of the per-round ratios of adjacent steps. The tracker covers N
training samples (50,000 for the 32x32 models, 1.28M for ImageNet-sized ResNet-50) and
indices walk through a random permutation, as in an epoch. Data loading is left out, which
makes the step shorter and the relative overhead larger (a conservative figure).

Because the added work (tens of microseconds) is far below the noise of a whole step on a
shared CPU, the added cost is also measured in isolation: the cross-entropy forward +
backward on the logits alone with and without record, plus one end_epoch() at N amortised
over the N / batch steps of an epoch; "isolated overhead" divides that by the plain step.

CPU: the embedded data's small CNN (1x28x28) and ResNet-18 with the CIFAR stem (3x32x32),
batch 128. GPU (when one is available): ResNet-18 CIFAR batch 128 and ResNet-50 224x224
batch 256, bfloat16 autocast and channels_last, timed with CUDA events.

--compile adds the ResNet-18 CIFAR step with its forward, loss and record() compiled
(torch.compile(fullgraph=True); backward and optimiser step as usual), on the GPU (on the
CPU when there is none); --cuda-graph adds the same step captured whole in a CUDA graph
(static index buffer; GPU only). Their rows give record()'s share of a compiled or
graph-replayed step; the isolated measurement is of eager calls only.

    python benchmarks/bench_overhead.py              # writes the 'overhead' section
    python benchmarks/bench_overhead.py --smoke --no-write
    python benchmarks/bench_overhead.py --gpu-only --compile --cuda-graph
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, set_threads, sync  # noqa: E402
from _results import RESULTS, markdown_table, write_section  # noqa: E402

from cldfast import CLDTracker  # noqa: E402
from cldfast.core import kernels  # noqa: E402
from cldfast.training.models import build_model  # noqa: E402

CONTROL = "plain, 2nd copy"
VARIANTS = ("plain", CONTROL, "record(losses)", "record(logits=)")
RECORDING = VARIANTS[2:]


@dataclass
class Config:
    name: str
    arch: str
    shape: tuple[int, int, int]
    classes: int
    batch: int
    n_train: int
    device: str
    amp: bool
    steps: int
    warmup: int
    mode: str = "eager"  # "eager", "compile" or "cuda-graph"
    backend: str = "inductor"  # torch.compile backend of mode "compile"


def make_tracker(cfg: Config) -> CLDTracker:
    rng = np.random.default_rng(0)
    return CLDTracker(rng.integers(0, cfg.classes, cfg.n_train), np.arange(cfg.classes),
                      device=cfg.device, num_classes=cfg.classes)


class Steps:
    """The variants' training steps: one copy of the same initial model each, a fixed
    synthetic batch, indices walking through a permutation of the N samples."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        dev = self.dev = torch.device(cfg.device)
        torch.manual_seed(0)
        base = build_model(cfg.arch, cfg.classes, cfg.shape).to(dev)
        self.x = torch.randn(cfg.batch, *cfg.shape, device=dev)
        if cfg.amp:
            base = base.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, cfg.classes, (cfg.batch,), device=dev)
        self.perm = torch.randperm(cfg.n_train)
        self.tracker = make_tracker(cfg)
        self.steps_per_epoch = cfg.n_train // cfg.batch
        self.models, self.opts = {}, {}
        for v in VARIANTS:
            self.models[v] = copy.deepcopy(base).train()
            self.opts[v] = torch.optim.SGD(self.models[v].parameters(), lr=0.01, momentum=0.9,
                                           nesterov=True, weight_decay=5e-4)
        self.counter = 0
        self.forwards = {v: self.forward for v in VARIANTS}
        if cfg.mode == "compile":
            self.forwards = {v: torch.compile(self.forward, backend=cfg.backend, fullgraph=True)
                             for v in VARIANTS}
        # Mode "cuda-graph": indices go through one static device buffer the graphs read.
        self.static_idx = torch.zeros(cfg.batch, dtype=torch.int64, device=dev)
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}
        if cfg.mode == "cuda-graph":
            self.capture()

    def next_index(self) -> torch.Tensor:
        i = self.counter % self.steps_per_epoch
        self.counter += 1
        # CPU indices, as a DataLoader yields them; on a GPU the tracker stages them itself.
        return self.perm[i * self.cfg.batch:(i + 1) * self.cfg.batch]

    def forward(self, v: str, model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
        """The step's forward and mean loss (the compiled part in mode "compile")."""
        # CUDA graphs need autocast's weight cache off (torch.cuda.graph's documentation).
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.cfg.amp,
                            cache_enabled=self.cfg.mode != "cuda-graph"):
            out = model(self.x)
        if v in ("plain", CONTROL):
            return F.cross_entropy(out.float(), self.y)
        if v == "record(losses)":
            losses = F.cross_entropy(out.float(), self.y, reduction="none")
            self.tracker.record(idx, losses)
            return losses.mean()
        return self.tracker.record(idx, logits=out, targets=self.y).mean()

    def train_step(self, v: str, idx: torch.Tensor) -> None:
        opt = self.opts[v]
        loss = self.forwards[v](v, self.models[v], idx)
        if self.cfg.mode != "cuda-graph":
            opt.zero_grad(set_to_none=True)  # a graph's replay writes the same grad buffers
        loss.backward()
        opt.step()

    def capture(self) -> None:
        """Warm-up on a side stream, then capture each variant's whole step."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                for v in VARIANTS:
                    self.opts[v].zero_grad(set_to_none=True)
                    self.train_step(v, self.static_idx)
        torch.cuda.current_stream().wait_stream(side)
        for v in VARIANTS:
            self.opts[v].zero_grad(set_to_none=True)
            self.graphs[v] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graphs[v]):
                self.train_step(v, self.static_idx)

    def step(self, v: str) -> None:
        recording = v in RECORDING
        if self.cfg.mode == "cuda-graph":
            if recording:
                self.static_idx.copy_(self.next_index(), non_blocking=True)
            self.graphs[v].replay()
        else:
            self.train_step(v, self.next_index() if recording else self.static_idx)


def bench_steps(cfg: Config) -> dict:
    """Interleaved step times of the variants."""
    steps = Steps(cfg)
    timer = Timer(cfg.device)
    for _ in range(cfg.warmup):
        for v in VARIANTS:
            steps.step(v)
    sync(cfg.device)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(cfg.steps):
        k = r % len(VARIANTS)
        order = VARIANTS[k:] + VARIANTS[:k]
        for v in order:
            times[v].append(timer.time(lambda: steps.step(v)))
    return times


def bench_isolated(cfg: Config, reps: int) -> dict:
    """The added work alone: CE forward+backward on logits with/without record, end_epoch."""
    dev = torch.device(cfg.device)
    tracker = make_tracker(cfg)
    g = torch.Generator().manual_seed(1)
    dtype = torch.bfloat16 if cfg.amp else torch.float32
    logits = (torch.randn(cfg.batch, cfg.classes, generator=g) * 3).to(dev, dtype).requires_grad_()
    y = torch.randint(0, cfg.classes, (cfg.batch,), generator=g).to(dev)
    idx = torch.randperm(cfg.n_train, generator=g)[:cfg.batch]  # CPU, as from a DataLoader
    timer = Timer(cfg.device)

    def ce_plain():
        for _ in range(reps):
            F.cross_entropy(logits.float(), y).backward()

    def ce_record_losses():
        for _ in range(reps):
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            tracker.record(idx, losses)
            losses.mean().backward()

    def ce_record_logits():
        for _ in range(reps):
            tracker.record(idx, logits=logits, targets=y).mean().backward()

    out = {}
    variants = (("plain", ce_plain), ("record(losses)", ce_record_losses),
                ("record(logits=)", ce_record_logits))
    for _, fn in variants:
        fn()  # warm-up
    # Interleaved rounds, order rotated, so that machine noise hits the variants alike.
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for r in range(9):
        order = variants[r % 3:] + variants[:r % 3]
        for name, fn in order:
            times[name].append(timer.time(fn))
    for name, _ in variants:
        out[name] = statistics.median(times[name]) / reps
    out["fused/unfused rounds"] = [a / b for a, b in zip(times["record(logits=)"], times["record(losses)"])]
    # One epoch-end update on a state where every sample was seen (second epoch: full work).
    all_idx = torch.arange(cfg.n_train, device=dev)
    val = torch.rand(cfg.classes, device=dev)
    ends = []
    for _ in range(3):
        tracker.discard_epoch()
        tracker.record(all_idx, torch.rand(cfg.n_train, device=dev))
        tracker.record_validation(val)
        sync(cfg.device)
        ends.append(timer.time(tracker.end_epoch))
    out["end_epoch"] = statistics.median(ends[1:])
    return out


def paired_ci(times: list[float], ref: list[float], draws: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of the median of per-round ratios times / ref."""
    ratios = np.asarray(times) / np.asarray(ref)
    rng = np.random.default_rng(0)
    meds = np.median(rng.choice(ratios, size=(draws, ratios.size), replace=True), axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


def configs(args) -> list[Config]:
    cpu = [Config("small CNN (embedded data)", "small-cnn", (1, 28, 28), 10, 128, 50_000, "cpu",
                  False, args.steps_small, 5),
           Config("ResNet-18, CIFAR stem", "resnet18", (3, 32, 32), 10, 128, 50_000, "cpu", False,
                  args.steps_resnet, 2)]
    gpu = [Config("ResNet-18, CIFAR stem", "resnet18", (3, 32, 32), 100, 128, 50_000, "cuda",
                  True, args.steps_gpu, 10),
           Config("ResNet-50, 224x224", "resnet50", (3, 224, 224), 1000, 256, 1_281_167, "cuda",
                  True, args.steps_gpu, 10)]
    if args.smoke:
        cpu = [Config(c.name, c.arch, c.shape, c.classes, 4 if c.arch != "small-cnn" else 128,
                      5_000, c.device, c.amp, 2, 1) for c in cpu]
        gpu = [Config(c.name, c.arch, c.shape, c.classes, min(c.batch, 32), 50_000, c.device,
                      c.amp, 3, 1) for c in gpu]
    has_gpu = torch.cuda.is_available() and kernels.cuda_compiled()
    chosen = gpu if args.gpu_only else cpu + (gpu if has_gpu and not args.cpu_only else [])
    # The ResNet-18 CIFAR step again, compiled and/or CUDA-graphed (on the GPU where there is
    # one in this run; compiled on the CPU otherwise).
    resnet = [c for c in chosen if c.arch == "resnet18"]
    base = next((c for c in resnet if c.device == "cuda"), resnet[0] if resnet else None)
    extra = []
    if args.compile and base is not None:
        extra.append(replace(base, name=base.name + ", compiled", mode="compile",
                             backend=args.compile_backend))
    if args.cuda_graph and base is not None and base.device == "cuda":
        extra.append(replace(base, name=base.name + ", CUDA graph", mode="cuda-graph"))
    return chosen + extra


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps-small", type=int, default=300,
                    help="interleaved steps per variant, small CNN (default: %(default)s)")
    ap.add_argument("--steps-resnet", type=int, default=20,
                    help="interleaved steps per variant, ResNet-18 on the CPU (default: %(default)s; "
                         "a step takes ~8 s on one core, and the isolated cost is the precise figure)")
    ap.add_argument("--steps-gpu", type=int, default=100,
                    help="interleaved steps per variant on the GPU (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads on the CPU (0: torch's default; default: %(default)s, "
                         "stable timings on a shared machine)")
    ap.add_argument("--cpu-only", action="store_true", help="skip the GPU configurations")
    ap.add_argument("--gpu-only", action="store_true",
                    help="GPU configurations only, written to the 'overhead-gpu' section")
    ap.add_argument("--compile", action="store_true",
                    help="also time the ResNet-18 CIFAR step with forward, loss and record() "
                         "compiled (torch.compile, fullgraph=True)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend for --compile (default: %(default)s; aot_eager "
                         "checks the code path quickly on the CPU)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also time the ResNet-18 CIFAR GPU step captured whole in a CUDA graph")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--results", default=str(RESULTS), help="file to write the section into")
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and kernels.cuda_compiled()
    if args.gpu_only and not gpu:
        ap.error("--gpu-only needs a CUDA GPU and a cldfast build with CUDA kernels")
    if args.cuda_graph and (args.cpu_only or not gpu):
        ap.error("--cuda-graph needs a CUDA GPU and a cldfast build with CUDA kernels")
    return args


def step_rows(cfg: Config, times: dict, med: dict) -> list[list]:
    """The end-to-end table's rows of one configuration."""
    rows = []
    where = "GPU" if cfg.device == "cuda" else "CPU"
    for v in VARIANTS:
        if v == "plain":
            ratio_txt, paired_txt = "1 (reference)", ""
        else:
            paired = np.array(times[v]) / np.array(times["plain"])
            q1, q2, q3 = np.percentile(paired, [25, 50, 75])
            ratio_txt = f"{med[v] / med['plain']:.4f}"
            paired_txt = f"{q2:.4f} [{q1:.3f}, {q3:.3f}]"
        rows.append([cfg.name, where + (", bf16 AMP" if cfg.amp else ""), cfg.batch, cfg.steps,
                     v, f"{1e3 * med[v]:.2f}", ratio_txt, paired_txt])
    return rows


def compiled_notes(cfg: Config, times: dict, med: dict) -> list[str]:
    """record()'s share of a compiled or graph-replayed step."""
    where = "GPU" if cfg.device == "cuda" else "CPU"
    how = (f"compiled ({cfg.backend}, fullgraph=True)" if cfg.mode == "compile"
           else "replayed from a CUDA graph")
    notes = []
    for v in RECORDING:
        lo, hi = paired_ci(times[v], times["plain"])
        notes.append(f"- {cfg.name} ({where}), {v}, step {how}: the medians differ by "
                     f"{100 * (med[v] / med['plain'] - 1):+.2f} % from the plain step's; "
                     f"95 % bootstrap interval of the median per-round ratio "
                     f"[{lo:.3f}, {hi:.3f}].")
    return notes


def isolated_rows_notes(cfg: Config, times: dict, med: dict, iso: dict) -> tuple[list, list[str]]:
    """The isolated table's rows of one configuration and the notes comparing them with the
    end-to-end figures."""
    where = "GPU" if cfg.device == "cuda" else "CPU"
    target = 1.0 if cfg.device == "cuda" else 2.0
    amort = iso["end_epoch"] / (cfg.n_train / cfg.batch)
    fused = iso["record(logits=)"] / iso["record(losses)"]
    q1, q2, q3 = np.percentile(iso["fused/unfused rounds"], [25, 50, 75])
    notes = [f"- {cfg.name} ({where}): the fused record(logits=, targets=) (cross-entropy "
             f"forward, record and backward in two native kernels) takes "
             f"{1e6 * iso['record(logits=)']:.1f} µs against {1e6 * iso['record(losses)']:.1f} µs "
             f"for F.cross_entropy(reduction='none') + record(losses): {fused:.2f}x the time "
             f"(per-round ratio median {q2:.2f} [IQR {q1:.2f}, {q3:.2f}]; "
             f"{'at least as fast' if q2 <= 1.0 else 'SLOWER'})."]
    rows = []
    for v in RECORDING:
        added = iso[v] - iso["plain"] + amort
        pct = 100 * added / med["plain"]
        rows.append([cfg.name, where, v, f"{1e6 * iso['plain']:.1f}", f"{1e6 * iso[v]:.1f}",
                     f"{1e3 * iso['end_epoch']:.2f} ms / {cfg.n_train // cfg.batch} steps",
                     f"{1e6 * added:.1f}", f"{pct:.4f} %", "met" if pct <= target else "NOT met"])
        measured = 100 * (med[v] / med["plain"] - 1)
        lo, hi = paired_ci(times[v], times["plain"])
        consistent = lo <= 1 + target / 100
        notes.append(f"- {cfg.name} ({where}), {v}: isolated added cost {pct:.3f} % of a step "
                     f"(target <= {target:g} %: {'met' if pct <= target else 'NOT met'}). "
                     f"End to end, the medians differ by {measured:+.2f} %; 95 % bootstrap "
                     f"interval of the median per-round ratio [{lo:.3f}, {hi:.3f}]: "
                     + ("consistent with the target" if consistent else
                        "the end-to-end figure does NOT confirm the target")
                     + (f", but this run cannot resolve differences below "
                        f"{100 * (hi - lo) / 2:.1f} %." if hi - lo > target / 100 else "."))
    return rows, notes


def measure(cfg: Config, args) -> tuple[list, list, list[str]]:
    """(end-to-end rows, isolated rows, notes) of one configuration."""
    print(f"overhead: {cfg.name} on {cfg.device}, batch {cfg.batch}, {cfg.steps} steps/variant",
          flush=True)
    times = bench_steps(cfg)
    med = {v: statistics.median(times[v]) for v in VARIANTS}
    where = "GPU" if cfg.device == "cuda" else "CPU"
    lo_c, hi_c = paired_ci(times[CONTROL], times["plain"])
    notes = [f"- {cfg.name} ({where}), A/A control (a second copy of the plain step): "
             f"medians differ by {100 * (med[CONTROL] / med['plain'] - 1):+.2f} %, 95 % "
             f"interval of the median per-round ratio [{lo_c:.3f}, {hi_c:.3f}]: the "
             "resolution of the end-to-end figures on this machine."]
    if cfg.mode != "eager":
        return step_rows(cfg, times, med), [], notes + compiled_notes(cfg, times, med)
    iso = bench_isolated(cfg, reps=20 if args.smoke else 200)
    iso_rows, iso_notes = isolated_rows_notes(cfg, times, med, iso)
    return step_rows(cfg, times, med), iso_rows, notes + iso_notes


def body_text(args, rows: list, iso_rows: list, notes: list[str], ran_gpu: bool) -> str:
    table = markdown_table(["model", "device", "batch", "steps/variant", "variant", "median step ms",
                            "ratio of medians", "median per-round ratio [IQR]"], rows)
    iso_table = markdown_table(["model", "device", "variant", "CE fwd+bwd µs, plain",
                                "CE fwd+bwd µs, with record", "end_epoch (amortised over)",
                                "added µs/step", "isolated overhead", "target"], iso_rows)
    gpu_note = ("" if ran_gpu else
                "No CUDA GPU in this run: the GPU configurations (ResNet-18 CIFAR batch 128 and "
                "ResNet-50 224x224 batch 256, bf16 autocast, channels_last, CUDA-event timing; "
                "target <= 1 %) are in the script and run when one is available.\n\n")
    return (f"Training step = forward, cross-entropy, backward, SGD step; fixed synthetic batch "
            f"(no data loading: a conservative overhead figure); {args.threads or 'default'} "
            f"torch thread(s) on the CPU. Interleaved steps, order rotated every round; medians. "
            f"A ratio of 1.0000 means no measurable difference; the IQR of the per-round ratios "
            f"shows the machine's noise.\n\n{gpu_note}{table}\n\n"
            f"The added work in isolation (cross-entropy forward + backward on the logits, with and "
            f"without record, median of 9 interleaved rounds of {20 if args.smoke else 200} calls; one end_epoch() "
            f"over N samples amortised over an epoch's steps), as a share of the plain step's "
            f"median:\n\n{iso_table}\n\n" + "\n".join(notes))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    rows, iso_rows, notes = [], [], []
    ran_gpu = False
    for cfg in configs(args):
        r, i, n = measure(cfg, args)
        rows, iso_rows, notes = rows + r, iso_rows + i, notes + n
        ran_gpu |= cfg.device == "cuda"
    body = body_text(args, rows, iso_rows, notes, ran_gpu)
    print(body)
    if not args.no_write:
        name, title = ("overhead-gpu", " (GPU)") if args.gpu_only else ("overhead", "")
        flags = "".join(f" {flag}" for flag, on in (("--gpu-only", args.gpu_only),
                                                    ("--compile", args.compile),
                                                    ("--cuda-graph", args.cuda_graph)) if on)
        write_section(name, "Training-loop overhead of record()" + title,
                      "benchmarks/bench_overhead.py" + flags, body, Path(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
