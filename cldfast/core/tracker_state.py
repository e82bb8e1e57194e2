"""A tracker's saved state across numbers of processes: its format, the whole-run state
combined from the states of every rank (:func:`consolidate`), and one rank's part cut out of
a whole-run state (:func:`for_rank`).

The entries :meth:`CLDTracker.state_dict` writes are declared once in the tracker
(cldfast.core.state); this module only knows how the entries that differ between ranks
combine and split again. Every other entry is the same on every rank.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from . import kernels as _ops

__all__ = ["STATE_FORMAT", "check_format", "consolidate", "for_rank"]

# Version of the state_dict layout; bump when it changes incompatibly.
STATE_FORMAT = 3

# Entries that differ between ranks, by how they combine over ranks and split again:
_SAMPLES = ("last", "i32_state", "acc")  # the rank's shard of per-sample state (last axis)
# Sums over the ranks (the open epoch's validation sums, counts per checkpoint): combined by
# adding, split by giving them to rank 0 (zeros elsewhere).
_SUMS = ("val_samples", "val_nonfinite", "observed_per_checkpoint")
_ANY = ("recorded", "val_recorded")  # whether any rank recorded in the open epoch
# Also per rank: "epoch" and "flags" (the open epoch, to rank 0) and "history_base" with
# "val_history" (the validation rows the rank's samples still refer to).
_RUN = ("num_samples", "num_classes", "per_class", "precision", "checkpoint",
        "train_labels_sha256", "num_checkpoints")  # must agree between the ranks of one run
_READ = ("format", "world_size", "rank", "epoch", "flags", "history_base", "val_history",
         *_SAMPLES, *_RUN[:5])


def check_format(state: Any) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"each rank's tracker state must be a dict; got {type(state).__name__}")
    if "format" in state and state["format"] != STATE_FORMAT:
        raise ValueError(f"tracker state has format {state['format']} (cldfast "
                         f"{state.get('version', '?')}); this cldfast reads format {STATE_FORMAT}")
    missing = [k for k in _READ if k not in state]
    if missing:
        raise KeyError(f"tracker state is missing {missing}; is it a CLDTracker.state_dict()?")


def _added(values: list[Any]) -> Any:
    if isinstance(values[0], list):
        return [sum(int(x) for x in col) for col in zip(*values)] if values[0] else []
    return sum(values[1:], values[0])


def _zero(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    return [0] * len(value) if isinstance(value, list) else 0


def consolidate(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One whole-run state (``world_size=1``) from the states of all ranks (any order)."""
    states = list(states)
    for s in states:
        check_format(s)
    world = int(states[0]["world_size"])
    ranks = sorted(int(s["rank"]) for s in states)
    if ranks != list(range(world)) or any(int(s["world_size"]) != world for s in states):
        raise ValueError(f"consolidating tracker states needs exactly one state of each rank "
                         f"0..W-1 of one run; got ranks {ranks} of world sizes "
                         f"{sorted({int(s['world_size']) for s in states})}")
    states.sort(key=lambda s: int(s["rank"]))
    for key in _RUN:
        values = {repr(s.get(key)) for s in states}
        if len(values) > 1:
            raise ValueError(f"tracker states of one run disagree on {key!r}: {sorted(values)}")
    first = states[0]
    if world == 1:
        return dict(first)
    n = int(first["num_samples"])
    chunk = max(1, math.ceil(n / world))
    # Open epoch: each rank holds a full-size [W, 2, chunk] buffer of its own batches.
    epoch = sum(s["epoch"].to(torch.float64) for s in states)
    epoch = epoch.permute(1, 0, 2).reshape(2, world * chunk)[:, :n]
    flags = torch.zeros_like(first["flags"])
    for count, first_bad in ((_ops.BAD_INDEX_COUNT, _ops.FIRST_BAD_INDEX),
                             (_ops.BAD_TARGET_COUNT, _ops.FIRST_BAD_TARGET)):
        flagged = [s["flags"] for s in states if int(s["flags"][count])]
        flags[count] = sum(int(f[count]) for f in flagged)
        if flagged:
            flags[first_bad] = flagged[0][first_bad]
    flags[_ops.NON_FINITE] = sum(int(s["flags"][_ops.NON_FINITE]) for s in states)
    # Every rank keeps the validation rows its own samples still refer to: the rank with
    # the oldest base holds the rows all of them need (rows are equal across ranks).
    oldest = min(states, key=lambda s: int(s["history_base"]))
    whole = {**first, "world_size": 1, "rank": 0, "flags": flags,
             "epoch": epoch.to(torch.float32).reshape(1, 2, n).contiguous(),
             "history_base": int(oldest["history_base"]), "val_history": oldest["val_history"]}
    whole.update({k: torch.cat([s[k] for s in states], dim=-1) for k in _SAMPLES})
    whole.update({k: _added([s[k] for s in states]) for k in _SUMS if k in first})
    whole.update({k: any(bool(s.get(k, False)) for s in states) for k in _ANY})
    return whole


def _reshard(whole: Mapping[str, Any], rank: int, world: int, lo: int, hi: int,
             chunk: int) -> dict[str, Any]:
    """Rank ``rank``'s part (shard ``[lo, hi)``) of a whole-run state: its slice of the
    per-sample state; the open epoch's sums and counters go to rank 0, where ``end_epoch``'s
    collectives find them."""
    n = int(whole["num_samples"])
    for key, want in (("epoch", (1, 2, n)), ("last", (n,)), ("i32_state", (2, n)),
                      ("acc", (5, n))):
        got = whole[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != want:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(f"whole-run tracker state {key!r} should have shape {want}; "
                             f"got {shape}")
    part = {**whole, "world_size": world, "rank": rank}
    part.update({k: whole[k][..., lo:hi] for k in _SAMPLES})
    if rank == 0:  # the open epoch goes to rank 0; end_epoch's reduce-scatter spreads it
        flat = torch.zeros(2, world * chunk, dtype=torch.float32)
        flat[:, :n] = whole["epoch"][0]
        part["epoch"] = flat.reshape(2, world, chunk).permute(1, 0, 2).contiguous()
    else:
        part["epoch"] = torch.zeros(world, 2, chunk, dtype=torch.float32)
        part["flags"] = torch.zeros_like(whole["flags"])
        part.update({k: _zero(whole[k]) for k in _SUMS if k in whole})
    return part


def for_rank(state: Any, *, rank: int, world: int, num_samples: int, shard: tuple[int, int],
             chunk: int) -> Mapping[str, Any]:
    """The state a tracker at rank ``rank`` of ``world`` loads: its own, or its part of a
    whole-run state (one process's, or the list of every rank's, combined first)."""
    if not isinstance(state, Mapping):
        if isinstance(state, Sequence) and not isinstance(state, (str, bytes)) and state:
            state = consolidate(state)
        else:
            raise TypeError(f"tracker state must be a dict from CLDTracker.state_dict() (or "
                            f"the list of every rank's); got {type(state).__name__}")
    check_format(state)
    if (state["world_size"], state["rank"]) == (world, rank):
        return state
    if int(state["world_size"]) != 1:
        raise ValueError(
            f"tracker state was saved by rank {state['rank']} of {state['world_size']} "
            f"processes; this is rank {rank} of {world}. Pass every rank's state (a list of "
            f"{state['world_size']}) to load it at another number of processes, or "
            "CLDTracker.consolidate_states(states)")
    if int(state["num_samples"]) != num_samples:
        raise ValueError(f"tracker state has num_samples={state['num_samples']!r} but this "
                         f"tracker has num_samples={num_samples!r}")
    return _reshard(state, rank, world, shard[0], shard[1], chunk)
