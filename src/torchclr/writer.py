"""The one writer: every file torchclr writes (checkpoints, embeddings, exports, reports, results, JSON) goes here.

A write goes to a temporary file in the target folder, is checked (when the caller says how), synced and renamed
over the target: a crash, a signal or a failed check never leaves half a file at the target path, and whatever was
there before stays intact until the new file is whole. Output paths are checked before any work
(`check_output`): a folder in the way, a path under a file, a folder that cannot be written or a path that is one
of the command's own inputs is one line naming the option, so that an hour of evaluation is never lost to a typo
in `--json`. A missing folder is created, with a one-line note (the same rule for every command).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from torchclr.errors import UserError
from torchclr.interrupt import Interrupted

TEMP_SUFFIX = ".tmp"


def check_output(path: str | Path, option: str, *, inputs: Sequence[str | Path] = ()) -> Path:
    """`path` as a place this command may write, checked before any work; raises UserError naming `option`.

    Refused: an existing folder at `path`, a parent that is a file, a folder without write permission, and any of
    `inputs` (the command's own input files: writing there would destroy what it reads). A missing parent folder is
    created, with a note.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise UserError(f"{option} {path} is {source}, an input of this command; writing it would destroy it")
    parent = path.parent
    blocking = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"{option} {path}: {blocking} is a file, not a folder")
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as err:
            raise UserError(f"{option} {path}: cannot create folder {parent}: {err.strerror or err}") from None
        print(f"torchclr: note: created folder {parent} for {option}", file=sys.stderr, flush=True)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: no permission to write in {parent}")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def describe_error(err: OSError, path: Path, what: str) -> str:
    """One line for an OSError met while writing `what` to `path`."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device to write {what} {path}; nothing was written there"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write {what} {path} ({err.strerror})"
    if err.errno == errno.ENOENT:
        return f"cannot write {what} {path}: folder {path.parent} does not exist"
    if err.errno == errno.ENOTDIR:
        return f"cannot write {what} {path}: a file stands where a folder of the path should be"
    if err.errno == errno.EISDIR:
        return f"cannot write {what} {path}: it is a folder"
    return f"cannot write {what} {path}: {err.strerror or err}"


@contextmanager
def signals_raise(what: str) -> Iterator[None]:
    """While inside, SIGTERM raises `Interrupted` (as Ctrl-C raises KeyboardInterrupt), so that a write in progress
    removes its temporary file instead of the process dying with it half-written (where SIGTERM would kill)."""
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield  # handlers may only be set in the main thread; a training loop's own handler (StopSignals) is kept
        return

    def stop(signum: int, _frame: Any) -> None:
        raise Interrupted(signum, f"stopped by {signal.Signals(signum).name} while writing {what}; nothing was left half-written")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def replace_file(path: str | Path, write: Callable[[Path], Any], check: Callable[[Path], Any] | None = None, *,
                 sync: bool = True) -> Any:
    """`write(temporary)` then `check(temporary)`, fsync and rename onto `path`; returns what `check` returns (what
    `write` returns when there is no check).

    Any failure (an exception from `write` or `check`, a full disk, a signal) removes the temporary file and leaves
    `path` as it was; OSErrors propagate (see `write_atomically` for the one-line form). Without `sync`, no fsync:
    for many small files whose writer syncs them all at once before recording them as done (the fsync was most
    of the cost of each).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        with signals_raise(str(path)):
            result = write(tmp)
            if check is not None:
                result = check(tmp)
            if sync:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def write_atomically(path: str | Path, write: Callable[[Path], None], *, what: str,
                     check: Callable[[Path], Any] | None = None, sync: bool = True) -> Any:
    """`replace_file`, with an OSError (full disk, no permission, a missing folder) as one line naming `what`."""
    try:
        return replace_file(path, write, check, sync=sync)
    except OSError as err:
        raise UserError(describe_error(err, Path(path), what)) from None


class BackgroundWrites:
    """One file write at a time in a thread beside the caller: a checkpoint is written and fsynced while training
    goes on (on a GPU an epoch of CIFAR-10 takes 2 s and a ResNet-18 checkpoint's write half a second). Every new
    write first waits for the last; `wait()` returns once it is on disk and re-raises its error (one line)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchclr-write")
        self._pending: Future[None] | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(job)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> "BackgroundWrites":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        """Every write lands before the block is left, by an error too (the last good checkpoint is on disk when a
        run stops on a diverged step); after an error, a failed write is not raised over it."""
        try:
            self.wait()
        except Exception:
            if kind is None:
                raise


def bytes_writer(data: bytes) -> Callable[[Path], None]:
    """A `write` for `replace_file` that puts `data` in the file."""
    def write(tmp: Path) -> None:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
            handle.write(data)
    return write


def npy_writer(array: np.ndarray) -> Callable[[Path], None]:
    """A `write` for `replace_file` that puts `array` in the file as .npy (through a handle: `np.save` given a name
    would add .npy to the temporary one)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    return write


def png_writer(image: Any) -> Callable[[Path], None]:
    """A `write` for `replace_file` that puts `image` (a PIL image, or uint8 [H, W] or [H, W, C] pixels) in the file
    as PNG (the format named, not guessed from the temporary file's suffix)."""
    def write(tmp: Path) -> None:
        from PIL import Image

        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(tmp, format="PNG")
    return write


def csv_writer(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Callable[[Path], None]:
    """A `write` for `replace_file` that puts `header` and `rows` in the file as CSV."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            table = csv.writer(handle)
            table.writerow(header)
            table.writerows(rows)
    return write


def append_line(path: str | Path, line: str, *, what: str, sync: bool = False) -> None:
    """Append `line` and a newline to a log in one write (fsynced with `sync`): a killed process leaves at most a
    cut last line, which the logs' readers drop. An OSError is one line naming `what`."""
    try:
        with open(path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
    except OSError as err:
        raise UserError(describe_error(err, Path(path), what)) from None


def write_bytes(path: str | Path, data: bytes, *, what: str) -> None:
    write_atomically(path, bytes_writer(data), what=what)


def write_text(path: str | Path, text: str, *, what: str) -> None:
    write_bytes(path, text.encode(), what=what)


def write_json(path: str | Path, values: Any, *, what: str) -> None:
    write_text(path, json.dumps(values, indent=2), what=what)


def save_figure(figure: Any, path: str | Path, dpi: int = 100) -> None:
    """A matplotlib figure as a PNG, atomically."""
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi), what="the figure")


@contextmanager
def locked(lock: Path, *, option: str, path: Path, command: str) -> Iterator[None]:
    """Hold the file `lock` (holding this process's pid and start time) while inside, so that two processes never
    write `path` (given as `option`) at once: a live holder is refused in one line, a dead one's lock is taken over
    with a note.

    The holder is written to a temporary file first and linked to `lock`: the lock never exists empty, so a process
    that reads it in between never takes a starting holder for a dead one. The start time tells a holder from a
    later process that got its pid (after a SIGKILL, even this one). Taking over a dead holder's lock happens under
    `_takeover_guard`, and only if the lock still holds what was found dead: two processes that find the same
    stale lock at once never both take it (the second finds the first's live lock, and is refused).
    """
    try:
        fd, name = tempfile.mkstemp(dir=lock.parent, prefix=f".{lock.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:
        raise UserError(describe_error(err, lock, "the lock file")) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(_holder(os.getpid()))
    try:
        while not _take(name, lock, option=option, path=path, command=command):
            pass
    finally:
        os.unlink(name)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _take(name: str, lock: Path, *, option: str, path: Path, command: str) -> bool:
    """One try at linking the holder file `name` to `lock`: True once held, False to try again (the lock changed
    hands meanwhile); a live holder is a UserError."""
    try:
        os.link(name, lock)
        return True
    except FileExistsError:
        pass
    except OSError as err:
        raise UserError(describe_error(err, lock, "the lock file")) from None
    found = _read_holder(lock)
    if found is None:  # let go since the link failed: link again
        return False
    holder = _live_holder(found)
    if holder is not None:
        raise UserError(f"{option} {path} is being written by another torchclr {command} (pid {holder}, "
                        f"lock {lock}); wait for it, or give another {option}")
    with _takeover_guard(lock.parent):
        if _read_holder(lock) != found:  # another process took it over (or let it go) since: look again
            return False
        print(f"torchclr: note: removing the stale lock {lock} of a run that is gone", file=sys.stderr, flush=True)
        lock.unlink(missing_ok=True)
        try:
            os.link(name, lock)
        except FileExistsError:  # a process that found no lock at all linked its own in between
            return False
        except OSError as err:
            raise UserError(describe_error(err, lock, "the lock file")) from None
    return True


@contextmanager
def _takeover_guard(folder: Path) -> Iterator[None]:
    """An exclusive flock on `folder` (the lock's) for the few calls of a takeover: the kernel drops it when the
    process dies, so a crash inside never leaves it held, and it leaves no file behind."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _holder(pid: int) -> str:
    """'PID START': the process's start time in clock ticks since boot (/proc); the pid alone where there is none."""
    try:
        return f"{pid} {Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return str(pid)


def _read_holder(lock: Path) -> str | None:
    """What `lock` holds ('PID START'), or None when it cannot be read (gone)."""
    try:
        return lock.read_text()[:64].strip()
    except OSError:
        return None


def _live_holder(text: str | None) -> int | None:
    """The pid of the live process that a lock holding `text` names, or None (no such process, or another one now
    has its pid)."""
    pid = text.split()[0] if text else ""
    if not pid.isdigit() or not _alive(int(pid)):
        return None
    return int(pid) if " " not in text or _holder(int(pid)) == text else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: Path, pattern: str) -> list[Path]:
    """Delete temporary files of writes whose process was killed (only this module's naming: `.NAME.*.tmp`)."""
    stale = [p for p in folder.glob(f".{pattern}.*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
