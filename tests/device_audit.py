"""Catch device mixing without a GPU: run code "on another device" with real values.

``with DeviceAudit() as audit:`` everything created on ``AUDIT_DEVICE`` (the ``meta`` device)
is a real CPU tensor wrapped so that it *reports* ``meta``: values are real (data-dependent
steps such as a sketch's rounds, ``nonzero`` or ``.tolist()`` run), the device is not the
CPU's. Every aten op is checked: one that mixes such a tensor with a non-scalar plain CPU
tensor (a buffer left on the host, ``torch.tensor(...)`` without a device, a CPU index), or a
collective (``c10d``) handed a plain CPU tensor, is recorded in ``audit.mixed`` as
``(op, devices)``. On a CUDA machine each of those is an error (or an implicit sync); here it
is a list the test asserts is empty.

Plain ``meta`` (shapes without values) misses what matters, and TorchRec treats it as a
shapes-only device: ``index_select`` and
``repeat_interleave`` with a CPU index pass silently on meta, and data-dependent ops fail;
``FakeTensorMode`` fails inside TorchRec (docs/stack.md). Real values with a device tag cover both.

Example::

    with DeviceAudit() as audit:
        emb = build_embeddings(cfg, comp, schema, 8, device=AUDIT_DEVICE)
        emb(kjt_on(AUDIT_DEVICE)).values().sum().backward()
    assert audit.mixed == []
"""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

# ``meta``: a device that exists in every build (autograd needs a device guard, which a made-up
# device lacks). Tagged tensors hold values, so they report ``is_meta`` False: TorchRec's
# shapes-only shortcuts for meta tensors (dummy KJT lengths) must not run.
AUDIT_DEVICE = torch.device("meta")


def _on_audit_device(device: Any) -> bool:
    return device is not None and torch.device(device).type == AUDIT_DEVICE.type


class Tagged(torch.Tensor):
    """A real CPU tensor (``._payload``) that reports ``AUDIT_DEVICE``."""

    _payload: torch.Tensor

    @staticmethod
    def __new__(cls, real: torch.Tensor) -> "Tagged":
        t = torch.Tensor._make_wrapper_subclass(
            cls, real.size(), strides=real.stride(), storage_offset=real.storage_offset(),
            dtype=real.dtype, device=AUDIT_DEVICE, requires_grad=real.requires_grad,
        )
        t._payload = real
        return t

    @property
    def is_meta(self) -> bool:  # type: ignore[override]
        return False

    # Python-level readers that refuse tensor subclasses: read the real values.
    def tolist(self):  # type: ignore[override]
        return self._payload.tolist()

    def numpy(self, *args, **kwargs):  # type: ignore[override]
        return self._payload.numpy(*args, **kwargs)

    def __repr__(self) -> str:  # type: ignore[override]
        return f"Tagged({self._payload!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return NotImplemented  # only under DeviceAudit (the mode unwraps)


def _wrap(out: Any) -> Any:
    return tree_map(lambda o: Tagged(o) if isinstance(o, torch.Tensor) and not isinstance(o, Tagged) else o, out)


class _FactoryMode(TorchFunctionMode):
    """Calls that name the audit device (``torch.zeros(..., device=d)``, ``t.to(d)``) run on the
    CPU and return Tagged results, before any backend is asked for the device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _on_audit_device(kwargs.get("device")):
            return _wrap(func(*args, **{**kwargs, "device": "cpu"}))
        if getattr(func, "__name__", "") == "new_tensor" and isinstance(args[0], Tagged) and "device" not in kwargs:
            return _wrap(func(args[0]._payload, *args[1:], **kwargs))  # built in C++ like torch.tensor
        if getattr(func, "__name__", "") in ("to", "cuda") and any(_is_device(a) for a in args[1:]):
            args = tuple("cpu" if _is_device(a) else a for a in args)
            return _wrap(func(*args, **kwargs))
        return func(*args, **kwargs)


def _is_device(a: Any) -> bool:
    try:
        return isinstance(a, (str, torch.device)) and _on_audit_device(a)
    except RuntimeError:  # a string that is not a device (e.g. a dtype name)
        return False


class _AuditMode(TorchDispatchMode):
    def __init__(self, mixed: List[Tuple[str, List[str]]]) -> None:
        super().__init__()
        self.mixed = mixed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        tagged = any(isinstance(a, Tagged) for a in tensors)
        host = [a for a in tensors if not isinstance(a, Tagged) and a.dim() > 0]
        collective = func.namespace == "c10d"
        if host and (tagged or collective):
            self.mixed.append((str(func), sorted({str(a.device) for a in host})))
        to_device = _on_audit_device(kwargs.get("device"))
        if to_device:
            kwargs = {**kwargs, "device": torch.device("cpu")}
        unwrap = lambda a: a._payload if isinstance(a, Tagged) else a  # noqa: E731
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if collective:  # in-place on the (unwrapped) inputs; hand back what the caller passed
            return out
        return _wrap(out) if tagged or to_device else out


class DeviceAudit:
    """Context manager: ``mixed`` lists every op that mixed devices inside it."""

    def __init__(self) -> None:
        self.mixed: List[Tuple[str, List[str]]] = []
        self._modes = (_FactoryMode(), _AuditMode(self.mixed))

    def __enter__(self) -> "DeviceAudit":
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)

    def ops(self) -> List[str]:
        return sorted({op for op, _ in self.mixed})
