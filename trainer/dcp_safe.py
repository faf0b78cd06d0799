"""Reading a DCP checkpoint without running code from its files.

``torch.distributed.checkpoint`` stores its index (``.metadata``) as a plain pickle and loads
it with ``pickle.load``; a crafted ``.metadata`` runs whatever it names. Its loader also
unpickles "bytes" entries with ``torch.load(weights_only=False)`` when the metadata says an
entry is bytes, which a crafted index can say of any key. So CompactRec reads DCP through:

- ``safe_metadata(data)``: the index unpickled by ``MetadataUnpickler``, which resolves only
  the classes DCP's index is made of (its metadata dataclasses, ``torch.Size``, dtypes and
  layouts, paths). Anything else (``os.system``, ``builtins.exec``, ...) is refused with
  ``UnsafeCheckpointError`` before it is called: pickle reaches code only through the
  globals ``find_class`` hands it.
- ``VerifiedReader``: DCP's ``FileSystemReader`` whose ``read_metadata`` takes the index
  bytes only when their size and digest equal those in our ``manifest.json`` (which was
  checked before), and unpickles them with the restricted unpickler.
- ``SafeLoadPlanner``: DCP's default planner with bytes entries loaded ``weights_only``.

Tensor data (``*.distcp``) is read by DCP itself with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, set_element
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

METADATA = ".metadata"

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED: Dict[str, FrozenSet[str]] = {
    _DCP_METADATA: frozenset({
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    }),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),  # a lookup of torch.strided etc. by name
    "torch": frozenset({"Size"}),
    "pathlib": frozenset({"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}),
    "collections": frozenset({"OrderedDict"}),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file names something that is not part of DCP's index format."""


class MetadataUnpickler(pickle.Unpickler):
    """Resolves only the globals of DCP's index (see the module doc)."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # torch.float32 and friends pickle as module globals
        raise UnsafeCheckpointError(f"refused to load '{module}.{name}' (not part of DCP's metadata format)")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError("refused a persistent id (not part of DCP's metadata format)")


def safe_metadata(data: bytes) -> Metadata:
    """DCP's index from the bytes of a ``.metadata`` file, without running code.

    Raises:
        UnsafeCheckpointError: the file names a global outside DCP's metadata format.
        pickle.UnpicklingError / ValueError: not a DCP index.
    """
    try:
        metadata = MetadataUnpickler(io.BytesIO(data)).load()
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # truncated or garbled pickles fail in many ways
        raise pickle.UnpicklingError(f"not a DCP index ({type(e).__name__}: {e})") from None
    if not isinstance(metadata, Metadata):
        raise ValueError(f"not a DCP index (holds a {type(metadata).__name__})")
    return metadata


class VerifiedReader(FileSystemReader):
    """``FileSystemReader`` whose index must match ``check(bytes)`` (our manifest's size and
    digest) and is unpickled by ``MetadataUnpickler``. No ``**kwargs`` on ``read_metadata``
    on purpose: DCP then never falls back to rank-local index files we did not verify."""

    def __init__(self, path: str | Path, check: Callable[[bytes], None]) -> None:
        super().__init__(str(path))
        self._check = check

    def read_metadata(self) -> Metadata:  # type: ignore[override]
        data = (Path(str(self.path)) / METADATA).read_bytes()
        self._check(data)  # raises when the bytes are not those the manifest describes
        metadata = safe_metadata(data)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner; bytes entries are loaded ``weights_only`` (its default
    planner unpickles them fully). CompactRec's state holds only tensors, so this is a guard
    against an index that claims a key is bytes."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj
