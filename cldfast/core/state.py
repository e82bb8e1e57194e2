"""One pattern for stateful per-sample objects (the CLD tracker, the recorders, the pruners).

Everything an object must carry across a checkpoint is declared once, in its constructor:

* :meth:`Stateful.add_state`: a tensor (copied back in place on load, its shape and dtype
  checked first);
* :meth:`Stateful.add_value`: a plain value (a counter, a list, a host-side array);
* :meth:`Stateful.add_config`: a fact fixed by the constructor's arguments (a size, the
  options, a digest of the labels): saved, compared with a loaded state's, never restored.

What follows from the declarations:

* :meth:`Stateful.state_dict` / :meth:`Stateful.load_state_dict`: every declaration with a
  checkpoint ``key`` (``None``: not saved, e.g. scratch buffers and buffers rebuilt from the
  constructor's arguments); a loaded state is checked whole (:meth:`Stateful.check_state`)
  before anything changes; a value missing from an older state takes its ``default``;
* ``nbytes`` counts the declared tensors;
* :meth:`Stateful.reset_states` refills the tensors declared with ``reset=`` (the epoch reset);
* :meth:`Stateful.move_states` moves the tensors to another device;
* :meth:`Stateful.summed_states` sums the tensors declared ``reduce="sum"`` over the ranks of
  a process group in one all-reduce, without changing them (the caller decides what to do
  with the sums, e.g. raise before folding anything in).

``state_key`` names the object in checkpoints and in the errors about its state.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

from . import distributed as ddist

__all__ = ["Stateful", "REQUIRED"]

REQUIRED: Any = object()  # ``default=`` of a declaration that every loaded state must hold
_SAME_KEY = ""


@dataclass(frozen=True)
class _Declared:
    name: str                  # the attribute (a config entry: its key)
    key: str | None            # checkpoint key; None: not saved
    kind: str                  # "tensor", "value" or "config"
    reset: float | None = None
    reduce: str | None = None
    default: Any = REQUIRED
    encode: Callable[[Any], Any] | None = None   # saved form of the attribute
    decode: Callable[[Any], Any] | None = None   # attribute from the saved form (values)
    rows: Callable[[Mapping[str, Any]], int] | None = None  # tensors: leading rows in use
    value: Any = None          # config: the constructor's value
    message: str | None = None  # config: the error when a loaded state disagrees


def _same(saved: Any, mine: Any) -> bool:
    if isinstance(mine, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != mine.shape:
            return False
        common = torch.promote_types(saved.dtype, mine.dtype)
        return torch.equal(saved.detach().cpu().to(common), mine.detach().cpu().to(common))
    return saved == mine


def _snapshot(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    return copy.deepcopy(value)


class Stateful:
    """Mixin: declared state; see the module docstring."""

    state_key = "state"
    _declared: dict[str, _Declared]

    def _declare(self, d: _Declared) -> None:
        if "_declared" not in self.__dict__:
            self._declared = {}
        self._declared[d.name] = d

    def add_state(self, name: str, tensor: torch.Tensor | None, *, key: str | None = _SAME_KEY,
                  reset: float | None = None, reduce: str | None = None,
                  rows: Callable[[Mapping[str, Any]], int] | None = None,
                  encode: Callable[[torch.Tensor], Any] | None = None,
                  default: Any = REQUIRED) -> torch.Tensor | None:
        """Declare the tensor ``self.<name> = tensor``. ``key``: its checkpoint key (default:
        ``name``; ``None``: not saved); ``reset``: the value :meth:`reset_states` fills it
        with; ``reduce``: ``"sum"`` to include it in :meth:`summed_states`; ``rows``: for a
        buffer whose leading rows only are in use, their number as a function of the state
        (the entries declared before it): only those are saved, and a loaded state's are
        checked against it; ``encode``: its saved form when that is not the tensor (e.g.
        ``int`` for a 0-d counter), loaded back with ``copy_``; ``default``: loaded when a
        state lacks the key."""
        if reduce not in (None, "sum"):
            raise ValueError(f"reduce must be None or 'sum'; got {reduce!r}")
        self._declare(_Declared(name, name if key == _SAME_KEY else key, "tensor", reset, reduce,
                                default, encode, rows=rows))
        setattr(self, name, tensor)
        return tensor

    def add_value(self, name: str, value: Any, *, key: str | None = _SAME_KEY,
                  default: Any = REQUIRED, encode: Callable[[Any], Any] | None = None,
                  decode: Callable[[Any], Any] | None = None) -> Any:
        """Declare the plain value ``self.<name> = value`` (``name`` may be a property with
        a setter). Saved as ``encode(value)`` (default: a copy), restored as
        ``decode(saved)`` (default: a copy); ``default`` when a state lacks the key."""
        self._declare(_Declared(name, name if key == _SAME_KEY else key, "value",
                                default=default, encode=encode, decode=decode))
        setattr(self, name, value)
        return value

    def add_config(self, key: str, value: Any, *, message: str | None = "") -> None:
        """Declare a constructor fact saved under ``key``. A loaded state must hold the same
        (else ``ValueError(message)``, formatted with ``owner``, ``key``, ``saved`` and
        ``mine``); ``message=None``: saved for information only, not compared."""
        if message == "":
            message = "{owner} state has {key}={saved!r} but this {owner} has {key}={mine!r}"
        self._declare(_Declared(key, key, "config", value=value, message=message))

    def _states(self, names: Iterable[str] | None = None) -> list[tuple[_Declared, torch.Tensor]]:
        chosen = self._declared.values() if names is None else [self._declared[n] for n in names]
        return [(d, getattr(self, d.name)) for d in chosen
                if d.kind == "tensor" and getattr(self, d.name) is not None]

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

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Every declared entry with a checkpoint key, as CPU tensors and plain values (a
        snapshot: later updates do not change it)."""
        state: dict[str, Any] = {}
        for d in self._declared.values():
            if d.key is None:
                continue
            v = d.value if d.kind == "config" else getattr(self, d.name)
            if d.rows is not None:
                v = v[: int(d.rows(state))]
            state[d.key] = d.encode(v) if d.encode is not None else _snapshot(v)
        return state

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Raise (changing nothing) unless ``state`` holds every required entry, the same
        config and every saved tensor with this object's shape and dtype."""
        owner = self.state_key
        for d in self._declared.values():
            if d.key is None:
                continue
            if d.key not in state:
                if d.default is REQUIRED:
                    raise KeyError(f"{owner} state is missing {d.key!r}; is it this object's "
                                   "state_dict()?")
                continue
            v = state[d.key]
            if d.kind == "config" and d.message is not None and not _same(v, d.value):
                raise ValueError(d.message.format(owner=owner, key=d.key, saved=v, mine=d.value))
            t = getattr(self, d.name) if d.kind == "tensor" and d.encode is None else None
            if t is None:
                continue
            want = (int(d.rows(state)), *t.shape[1:]) if d.rows is not None else tuple(t.shape)
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != want or v.dtype != t.dtype:
                got = (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"{owner} state {d.key!r} should be {t.dtype} {want}; got {got}")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; everything is checked before anything changes."""
        self.check_state(state)
        for d in self._declared.values():
            if d.key is None or d.kind == "config":
                continue
            v = state.get(d.key, d.default)
            if d.kind == "value":
                setattr(self, d.name, d.decode(v) if d.decode is not None else copy.deepcopy(v))
                continue
            t = getattr(self, d.name)
            if t is None:
                continue
            if d.rows is not None:
                if v.shape[0] > t.shape[0]:
                    t = torch.zeros((v.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
                    setattr(self, d.name, t)
                t = t[: v.shape[0]]
            t.copy_(torch.as_tensor(v, dtype=t.dtype))

    # ------------------------------------------------------------------ torch.distributed
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
