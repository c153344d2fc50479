"""One run per run directory: rank 0 holds an OS lock (flock) on <run_dir>/train.lock for the run's
life, so a second run started on the same directory (fresh, --resume or --force-fresh) is refused
with one line naming the holder's pid, before it touches anything. The kernel releases the lock
when its holder exits however it ends (kill -9 too), so a dead run never leaves a stale lock; the
file itself stays (removing it would let two runs each lock a file of their own)."""
import fcntl
import os
import time

from utils import OutputError, UserError

LOCK_NAME = "train.lock"  # not a dot name: those are the temporaries of killed writes


class RunDirBusy(UserError):
    """Another live run holds the run directory."""


class RunLock:
    def __init__(self, run_dir: str):
        self.run_dir, self.path, self.fd = run_dir, os.path.join(run_dir, LOCK_NAME), None

    def acquire(self) -> "RunLock":
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"--out_dir {self.run_dir} is not writable ({e.strerror or e}); choose another "
                              "directory or fix its permissions")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(fd)
            os.close(fd)
            raise RunDirBusy(f"{self.run_dir} is in use by another run (pid {holder}); wait for it to end or stop it, "
                             "or choose another --run_name")
        except OSError as e:  # a file system without flock (some network mounts): run, unguarded
            print(f"warning: cannot lock {self.path} ({e.strerror or e}): nothing stops a second run on this directory")
            os.close(fd)
            return self
        try:  # the pid, for the message a second run gives
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # a full disk: the lock holds all the same, the message says "pid unknown"
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    def __enter__(self):  # `with RunLock(d).acquire():` holds it for the block
        return self

    def __exit__(self, *exc):
        self.release()


def _holder_pid(fd: int) -> str:
    """The pid the holder wrote; it writes it just after locking, so an empty file is read again briefly."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.05)
    return "unknown"
