"""The sharded form (described in checkpoint/format.py): a directory NAME.dcp with meta.pth (the
checkpoint dict, each sharded tensor replaced by a marker, a single file) and
torch.distributed.checkpoint's files holding those tensors, one shard file per writing rank.
Importing it imports torch.distributed.checkpoint (seconds), so the package imports it only where a
sharded checkpoint is read or written."""
import os
import pickle
import shutil
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.tensor import DTensor, distribute_tensor

from checkpoint.format import MARKER, SHARD_META, SHARDED, CheckpointError, CheckpointMeta, is_sharded
from checkpoint.single import atomic_save, read as read_file
from utils import OutputError, fsync_directory, _is_disk_full as is_disk_full

# Converting a single file: the tensors that grow with the model go to DCP, small ones stay in meta.pth.
BULK_PARTS = ("model", "ema", "optimizer")


def _split(obj, shard, path=()):
    """(obj with each tensor that shard(path, tensor) picks replaced by a marker, {key: tensor})."""
    if isinstance(obj, torch.Tensor) and shard(path, obj):
        key = "/".join(map(str, path))
        return {MARKER: key, "shape": list(obj.shape), "dtype": str(obj.dtype).removeprefix("torch.")}, {key: obj}
    if isinstance(obj, dict):
        out, tensors = {}, {}
        for k, v in obj.items():
            out[k], found = _split(v, shard, path + (k,))
            tensors.update(found)
        return out, tensors
    if isinstance(obj, (list, tuple)):
        pairs = [_split(v, shard, path + (i,)) for i, v in enumerate(obj)]
        tensors = {k: t for _, found in pairs for k, t in found.items()}
        return type(obj)(p for p, _ in pairs), tensors
    return obj, {}


def _markers(obj, path=()):
    if isinstance(obj, dict) and MARKER in obj:
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _markers(v, path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _markers(v, path + (i,))


def _fill(obj, tensors):
    if isinstance(obj, dict) and MARKER in obj:
        return tensors[obj[MARKER]]
    if isinstance(obj, dict):
        return {k: _fill(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, tensors) for v in obj)
    return obj


def _at(obj, path):
    for k in path:
        if isinstance(obj, dict) and k in obj:
            obj = obj[k]
        elif isinstance(obj, (list, tuple)) and isinstance(k, int) and k < len(obj):
            obj = obj[k]
        else:
            return None
    return obj


def _is_dtensor(path, t) -> bool:
    return isinstance(t, DTensor)


def _is_bulk(path, t) -> bool:
    return path[0] in BULK_PARTS and t.dim() > 0


# ---- writing ---------------------------------------------------------------------------------------
def write(path: str, parts: dict, meta: CheckpointMeta) -> None:
    """A collective: every rank calls it with its own parts (DTensor shards); writes the directory path."""
    write_state(path, meta.state(parts))


def write_state(path: str, state: dict, shard=_is_dtensor) -> None:
    """Write state as the directory path: a collective when a process group is up (each rank writes
    its shards), else one process. Built under a temporary name that rank 0 renames once every
    rank's shards, DCP's metadata and meta.pth are on disk, so path is complete or absent."""
    skeleton, tensors = _split(state, shard)
    distributed = dist.is_initialized()
    main = not distributed or dist.get_rank() == 0
    pid = [os.getpid()]
    if distributed:  # one temporary name for all ranks, carrying rank 0's pid for stale clean-up
        dist.broadcast_object_list(pid, src=0)
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{pid[0]}")
    try:
        with warnings.catch_warnings():  # DCP warns when one process writes without a process group
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(tensors, checkpoint_id=tmp, no_dist=not distributed)
        if main:
            atomic_save(skeleton, os.path.join(tmp, SHARD_META))
            _replace(tmp, path)
    except OutputError:
        raise
    except (Exception, CheckpointException) as e:  # DCP wraps a rank's failure in a BaseException of its own
        cause = _cause(e)
        if is_disk_full(cause):
            raise OutputError(f"cannot write the sharded checkpoint {path}: no space left on the device; free some "
                              "space or choose another directory (earlier checkpoints are intact)") from None
        raise OutputError(f"cannot write the sharded checkpoint {path}: {_describe(cause)}") from None
    finally:
        if main and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if distributed:
            dist.barrier()  # no rank moves on (or reads it) before the rename


def _replace(tmp: str, path: str) -> None:
    """Rename the finished directory into place; an older one of that name is set aside first
    (a directory cannot be renamed over a non-empty one) and removed after."""
    directory, name = os.path.split(os.path.abspath(path))
    old = os.path.join(directory, f".{name}.old.tmp-{os.getpid()}")
    if os.path.exists(path):
        os.rename(path, old)
    os.rename(tmp, path)
    fsync_directory(directory)
    shutil.rmtree(old, ignore_errors=True)


# ---- reading ---------------------------------------------------------------------------------------
def read_meta(path: str) -> dict:
    return read_file(os.path.join(path, SHARD_META))


def _cause(e: BaseException) -> BaseException:
    """The exception a rank raised inside DCP (the first one), or e itself."""
    if isinstance(e, CheckpointException) and e.failures:
        wrapped = next(iter(e.failures.values()))
        return wrapped[0] if isinstance(wrapped, tuple) else wrapped
    return e


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    text = str(e).splitlines()[0][:160] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# What DCP's .metadata pickle may name, as exact (module, name) pairs: its own metadata records,
# tensor sizes, dtypes and layouts, and the path it was saved to. Nothing is looked up through them
# (a dotted name such as "os.system" asked of DCP's metadata module is not a pair here).
_METADATA_CLASSES = frozenset(
    [("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")]
    + [("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
       ("torch", "Size"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath")]
    + [("torch", n) for n, v in vars(torch).items() if isinstance(v, torch.dtype)])


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _METADATA_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not something a checkpoint's metadata holds")


def check_metadata(path: str) -> Metadata:
    """DCP's .metadata, unpickled with the allow-list above and checked: a crafted checkpoint is
    refused instead of running code. Every entry must be a tensor, which DCP reads weights-only; an
    entry of bytes would be unpickled by DCP with code allowed to run, and this project writes none.
    Shard files must lie inside the checkpoint directory."""
    try:
        with open(os.path.join(path, ".metadata"), "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: its .metadata file is missing (an incomplete sharded checkpoint?)") from None
    except Exception as e:
        raise CheckpointError(f"{path}: refusing its .metadata ({str(e)[:160] or type(e).__name__})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{path}: refusing its .metadata (it holds no DCP metadata record)")
    for key, entry in metadata.state_dict_metadata.items():
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointError(f"{path}: refusing its .metadata: entry {str(key)[:80]!r} is "
                                  f"{type(entry).__name__}, not a tensor (reading it could run code)")
    for info in (metadata.storage_data or {}).values():
        where = getattr(info, "relative_path", None)
        if not isinstance(where, str) or os.path.basename(where) != where or where in ("", ".", ".."):
            raise CheckpointError(f"{path}: refusing its .metadata: it points outside the checkpoint "
                                  f"({str(where)[:80]!r})")
    return metadata


class _VettedReader(FileSystemReader):
    """DCP's file reader, handed the metadata check_metadata read: DCP never unpickles .metadata
    itself (nor, with no rank argument here, falls back to a rank's own __R.metadata file)."""

    def __init__(self, path: str, metadata: Metadata):
        super().__init__(path)
        self.vetted = metadata

    def read_metadata(self) -> Metadata:
        if getattr(self.vetted, "storage_meta", None) is None:
            self.vetted.storage_meta = StorageMeta()
        self.vetted.storage_meta.load_id = self.load_id
        return self.vetted


def _load(path: str, dests: dict, no_dist: bool) -> None:
    reader = _VettedReader(path, check_metadata(path))
    try:
        with warnings.catch_warnings():  # DCP warns that one process reads without a process group
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(dests, storage_reader=reader, no_dist=no_dist)
    except (Exception, CheckpointException) as e:  # DCP's own exception is a BaseException
        raise CheckpointError(f"{path}: its shard files are missing, cut or do not fit "
                              f"({_describe(_cause(e))})") from None


def _empty(marker) -> torch.Tensor:
    dtype, shape = getattr(torch, str(marker.get("dtype")), None), marker.get("shape")
    if not isinstance(dtype, torch.dtype) or not isinstance(shape, list) or \
            not all(isinstance(n, int) and n >= 0 for n in shape):
        raise CheckpointError(f"a shard marker in {SHARD_META} is malformed ({str(marker)[:120]})")
    return torch.empty(shape, dtype=dtype)


def read_full(path: str) -> dict:
    """The whole checkpoint as one process sees a single file: every tensor full, on the CPU."""
    meta = read_meta(path)
    dests = {m[MARKER]: _empty(m) for _, m in _markers(meta)}
    _load(path, dests, no_dist=True)
    return _fill(meta, dests)


def read_into(path: str, live: dict) -> dict:
    """The checkpoint with each saved tensor read into the run's live tensor at the same place
    (a DTensor gets only its own shard, whatever world size wrote it). A collective under a
    process group. Tensors the run has no counterpart for come back full."""
    meta = read_meta(path)
    dests = {}
    for where, m in _markers(meta):
        target = _at(live, where)
        fits = isinstance(target, torch.Tensor) and list(target.shape) == m["shape"]
        dests[m[MARKER]] = target if fits else _empty(m)
    _load(path, dests, no_dist=not dist.is_initialized())
    return _fill(meta, dests)


def place_like(state, live):
    """A single file's full tensors, each cut to this rank's shard where the live tensor at the
    same place is a DTensor (every rank holds the same file, so no communication is needed)."""
    if isinstance(live, DTensor) and isinstance(state, torch.Tensor) and state.shape == live.shape:
        return distribute_tensor(state.to(live.dtype), live.device_mesh, live.placements, src_data_rank=None)
    if isinstance(state, dict) and isinstance(live, dict):
        return {k: place_like(v, live.get(k)) for k, v in state.items()}
    if isinstance(state, (list, tuple)) and isinstance(live, (list, tuple)) and len(state) == len(live):
        return type(state)(place_like(s, lv) for s, lv in zip(state, live))
    return state


# ---- converting ------------------------------------------------------------------------------------
def to_sharded(src: str, dst: str) -> None:
    """One checkpoint file as a sharded directory (one writer), which any number of --fsdp ranks resume."""
    if is_sharded(src) or not dst.endswith(SHARDED):
        raise CheckpointError(f"shard takes a .pth checkpoint and a new {SHARDED} directory name, got {src} -> {dst}")
    write_state(dst, read_file(src), shard=_is_bulk)


def to_single_file(src: str, dst: str) -> None:
    """A sharded checkpoint directory as one file (what inference, export and evaluation read)."""
    if not is_sharded(src):
        raise CheckpointError(f"{src} is not a sharded checkpoint (a .dcp directory holding {SHARD_META})")
    atomic_save(read_full(src), dst)
