"""One pattern for stateful per-sample objects (the CLD tracker and the other recorders).

A tensor is declared once with :meth:`Stateful.add_state`; what follows from the declaration:

* ``nbytes`` counts it;
* :meth:`Stateful.reset_states` refills it at the end of an epoch (``reset=`` value);
* :meth:`Stateful.move_states` moves it to another device;
* :meth:`Stateful.saved_states` / :meth:`Stateful.check_saved` / :meth:`Stateful.load_saved`
  put it into a checkpoint under ``key`` (``None``: not saved, e.g. scratch buffers and
  buffers rebuilt from the constructor's arguments), check a loaded one's shape and dtype
  before anything changes, and copy it back;
* :meth:`Stateful.summed_states` sums the buffers declared ``reduce="sum"`` over the ranks
  of a process group in one all-reduce, without changing them (the caller decides what to
  do with the sums, e.g. raise before folding anything in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from . import distributed as ddist

__all__ = ["Stateful"]


@dataclass(frozen=True)
class _Declared:
    name: str
    key: str | None
    reset: float | None
    reduce: str | None


class Stateful:
    """Mixin: declared tensor state; see the module docstring."""

    _declared: dict[str, _Declared]

    def add_state(self, name: str, tensor: torch.Tensor, *, key: str | None = "",
                  reset: float | None = None, reduce: str | None = None) -> torch.Tensor:
        """Declare ``self.<name> = tensor``. ``key``: its checkpoint key (default: ``name``;
        ``None``: not saved); ``reset``: the value :meth:`reset_states` fills it with;
        ``reduce``: ``"sum"`` to include it in :meth:`summed_states`."""
        if reduce not in (None, "sum"):
            raise ValueError(f"reduce must be None or 'sum'; got {reduce!r}")
        if "_declared" not in self.__dict__:
            self._declared = {}
        self._declared[name] = _Declared(name, name if key == "" else key, reset, reduce)
        setattr(self, name, tensor)
        return tensor

    def _states(self, names: Iterable[str] | None = None) -> list[tuple[_Declared, torch.Tensor]]:
        chosen = self._declared.values() if names is None else [self._declared[n] for n in names]
        return [(d, getattr(self, d.name)) for d in chosen if getattr(self, d.name) is not None]

    def _extra_tensors(self) -> list[torch.Tensor]:
        """Tensors held besides the declared ones (dynamic: caches, host copies)."""
        return []

    @property
    def nbytes(self) -> int:
        """Bytes held by this object's tensors (declared state, scratch and caches)."""
        tensors = [t for _, t in self._states()] + list(self._extra_tensors())
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def reset_states(self, names: Iterable[str] | None = None) -> None:
        """Refill the declared buffers that have a ``reset`` value (or only ``names``)."""
        for d, t in self._states(names):
            if d.reset is not None:
                t.fill_(d.reset)

    def move_states(self, device: torch.device | str) -> None:
        for d, t in self._states():
            if t.device != torch.device(device):
                setattr(self, d.name, t.to(device))

    def saved_states(self) -> dict[str, torch.Tensor]:
        """CPU copies of the declared tensors that have a checkpoint key."""
        return {d.key: t.detach().cpu().clone() for d, t in self._states() if d.key is not None}

    def check_saved(self, state: Mapping[str, Any], owner: str,
                    shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        """Raise (changing nothing) unless ``state`` holds every saved tensor with this
        object's shape (or ``shapes[key]``) and dtype."""
        for d, t in self._states():
            if d.key is None:
                continue
            want = tuple((shapes or {}).get(d.key, t.shape))
            if d.key not in state:
                raise KeyError(f"{owner} state is missing {d.key!r}; is it this object's state_dict()?")
            v = state[d.key]
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != want or v.dtype != t.dtype:
                got = (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"{owner} state {d.key!r} should be {t.dtype} {want}; got {got}")

    def load_saved(self, state: Mapping[str, Any]) -> None:
        """Copy the saved tensors back in place (after :meth:`check_saved`)."""
        for d, t in self._states():
            if d.key is not None:
                t.copy_(state[d.key])

    def summed_states(self, extra: Iterable[torch.Tensor] = (), group: Any = None,
                      distributed: bool = True) -> list[torch.Tensor]:
        """float64 copies of the ``reduce="sum"`` buffers (declaration order) followed by
        ``extra``, summed over the ranks of ``group`` in one all-reduce when ``distributed``.
        Nothing held is changed."""
        parts = [t for d, t in self._states() if d.reduce == "sum"] + list(extra)
        if not parts:
            return []
        flat = torch.cat([p.reshape(-1).to(torch.float64) for p in parts])
        if distributed:
            ddist.all_reduce_sum_(flat, group)
        out, at = [], 0
        for p in parts:
            out.append(flat[at:at + p.numel()].view(p.shape))
            at += p.numel()
        return out
