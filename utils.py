"""Small cross-cutting helpers: seeding, device and dtype resolution, formatting, safe file writes,
and the one way every command turns a user's mistake into a single error line."""
import argparse
import errno
import json
import os
import random
import shutil
import sys

import numpy as np

# torch is imported inside the helpers that need it: the data pipeline uses this module too, and
# importing torch there would double the processor's memory (about 160 MiB of RSS) for nothing.

IGNORE_INDEX = -100  # label of a position that carries no loss (model, masking and metrics agree on it)
EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A mistake in what the user asked for or gave (flag, file, disk): printed as one line, exit 2.
    ConfigError, UsageError and OutputError (below), DataError, CheckpointError and ConvertError derive from it."""


class OutputError(UserError):
    """An output path that cannot be written (read-only, missing, full disk)."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot work; the message is one line naming the key."""


class UsageError(UserError):
    """A flag, a combination of flags or a request a command cannot honour (inference, evaluate)."""


def run_cli(main, argv=None) -> int:
    """Call main(argv); a UserError becomes `error: <message>` and exit 2, Ctrl-C exit 130 without a
    traceback (as shells expect)."""
    try:
        return main(argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return -1


def check_writable_dir(path: str, what: str) -> None:
    """Create `path` if needed and prove a file can be written there, before any work starts."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"x")
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"{what} {path} is not writable ({e.strerror or e}); choose another directory "
                          "or fix its permissions")


def _is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    # torch.save to a full disk surfaces as a RuntimeError from its zip writer ("enforce fail ...").
    return isinstance(e, RuntimeError) and ("enforce fail" in str(e) or "No space left" in str(e))


def fsync_directory(directory: str) -> None:
    """Make a rename inside directory durable (the entry, not only the file, reaches the disk)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write, binary: bool = True, size_hint: int = 0) -> None:
    """Write `path` so that it exists only complete: write(f) into a temporary file in the same
    directory, flush, fsync, rename, fsync the directory. A failure leaves the old file untouched
    and no temporary behind; a full disk or unwritable directory is an OutputError of one line."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(directory)
    except (OSError, RuntimeError) as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if _is_disk_full(e):
            need = max(size_hint, written)
            raise OutputError(f"no space left to write {path}: {_free_bytes(directory) / 1e6:.1f} MB free, "
                              f"at least {need / 1e6:.1f} MB needed; free some space or choose another "
                              "directory (earlier files are intact)") from None
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str, obj) -> None:
    def write(f):
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    atomic_write(path, write, binary=False)


def remove_stale_temporaries(directory: str) -> int:
    """Delete the `.<name>.tmp-<pid>` files (and sharded-checkpoint directories) of atomic writes
    killed midway (their process is gone)."""
    removed = 0
    if not os.path.isdir(directory):
        return 0
    for name in os.listdir(directory):
        head, sep, pid = name.rpartition(".tmp-")
        if not (name.startswith(".") and sep and pid.isdigit()):
            continue
        if int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                stale = os.path.join(directory, name)
                shutil.rmtree(stale) if os.path.isdir(stale) else os.remove(stale)
                removed += 1
            except OSError:
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process nobody has reaped yet (a zombie) still answers kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_json_or_none(path: str):
    """A small JSON state file (progress, sidecar identity), or None when it is missing or cut short."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def jsonl_objects(path: str):
    """(line, object) for each line of a JSONL file that a kill may have cut short that holds a
    JSON object: unreadable lines (the cut last one, stray bytes) are skipped."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield line, record


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    import torch
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> "torch.device":
    """'auto' picks cuda when available, else cpu; anything else is passed to torch."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(name: str) -> "torch.device":
    """--device as a torch.device this machine has, or one UserError line saying why not."""
    import torch
    try:
        device = resolve_device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name (try auto, cpu, cuda, cuda:1, mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here")
    return device


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # the torch dtypes --dtype names, and their widths
DTYPES = tuple(DTYPE_BYTES)  # what --dtype accepts besides auto


def resolve_dtype(name: str, device: "torch.device") -> "torch.dtype":
    """Map --dtype to a torch dtype. 'auto': bf16 on GPUs that support it, fp16 on older GPUs,
    fp32 on CPU (bf16 matmuls on common CPUs are far slower than fp32)."""
    import torch
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}")
    return getattr(torch, name)


def format_count(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class OneLineArgumentParser(argparse.ArgumentParser):
    """A command-line mistake is one line (and exit 2) instead of the usage block, like every other error."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"error: {message}; see {self.prog} --help\n")
