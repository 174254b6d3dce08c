"""Safe writers for every file cnnlens writes into an output folder.

Each writer writes to a temporary file ``.<name>.<random>.tmp`` in the destination's folder, then
renames it over the destination with :func:`os.replace`. So:

* a process killed midway never leaves half a file under the real name (at most a stale
  ``.tmp`` file, which :func:`clean_stale_tmp` removes);
* a destination that is a symbolic link is never followed: ``os.replace`` replaces the link
  itself with a regular file, so a link planted in an output folder (``out/summary.json ->
  ../victim.txt``) cannot make cnnlens overwrite a file outside that folder. The link is
  replaced rather than refused: the file cnnlens was asked to write is written, in the folder it
  was asked to write to, and whatever the link pointed to is left untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from cnnlens.errors import InputError

TMP_SUFFIX = ".tmp"
#: The lock file a command holds in its output folder while it writes there (see :func:`output_lock`).
LOCK_FILE = ".cnnlens.lock"


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


#: The permissions of a written file: those a plain ``open(path, "w")`` gives under the process's umask.
FILE_MODE = _file_mode()


def tmp_prefix(name: str) -> str:
    """The prefix of the temporary files written for a destination called ``name``."""
    return f".{name}."


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a temporary binary file beside ``path``; on success it is renamed over ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. The rename
    replaces a symbolic link at ``path`` rather than following it.

    Args:
        path: The destination (its folder is created).

    Yields:
        The open temporary file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(target.name), suffix=TMP_SUFFIX, dir=target.parent)
    try:
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600 files: give the mode open() would
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_with(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` atomically by calling ``write`` on an open binary file (``np.savez``,
    ``Image.save`` with a format, ``torch.save``, ``Figure.savefig`` with a format)."""
    with atomic_writer(path) as f:
        write(f)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, never through a symbolic link."""
    return write_with(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, never through a symbolic link."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 1, default: Any = None) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically, never through a symbolic link."""
    return write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")


@contextmanager
def appender(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open ``path`` to append to it (created if missing; readable, for a check of its last byte),
    never through a symbolic link: a link planted at ``path`` is replaced by a new file, as the
    writers above do. For logs that grow a record at a time (``results.jsonl``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(target, flags, FILE_MODE), "r+b") as f:
        yield f


def clean_stale_tmp(folder: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Remove the temporary files the writers of this module left for ``names`` in ``folder``.

    Only files named ``.<name>.<anything>.tmp`` (or ``.<name>.tmp``, the older writer's) for a
    ``name`` in ``names`` are removed: what a killed write of one of those files leaves behind.

    Returns:
        The removed files.
    """
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for name in names:
        prefix = tmp_prefix(name)
        for entry in root.iterdir():
            n = entry.name
            if n.startswith(prefix) and n.endswith(TMP_SUFFIX) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def check_output_folder(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """``path`` as a :class:`~pathlib.Path`, checked before any work is done.

    Raises:
        InputError: ``path`` is an existing file, not a folder.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{flag} {folder} is a file, not a folder; give a folder path (it is created)")
    return folder


def output_folder(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents) if needed and return it.

    Raises:
        InputError: ``path`` (or one of its parents) is an existing file, not a folder.
    """
    folder = check_output_folder(path, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise InputError(
            f"{flag} {folder} cannot be created ({err.strerror}: a parent is a file); give a folder path"
        ) from err
    return folder


_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def safe_name(name: str) -> str:
    """``name`` (an image stem, a class label, a model name from the user's data) as one file name
    that stays in the folder it is joined to: path separators (``/``, ``\\``) and control characters
    become ``_``, and a name that is empty or starts with a dot (``..``, ``.``, a hidden file) gets a
    leading ``_``. Names that are already safe are returned unchanged."""
    safe = _UNSAFE.sub("_", name)
    if not safe or safe.startswith("."):
        safe = "_" + safe.lstrip(".")
    return safe


def subfolder(root: str | os.PathLike[str], name: str) -> Path:
    """The folder ``root/name`` for one item's files (an image's maps), created if needed, that is
    certainly inside ``root``.

    ``name`` is made one safe file name by :func:`safe_name`; a symbolic link already at
    ``root/name`` is replaced by a real folder (whatever it pointed to is left untouched), as the
    writers do for files.
    """
    folder = Path(root) / safe_name(name)
    if folder.is_symlink():
        folder.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def output_lock(path: str | os.PathLike[str], flag: str = "--out") -> Iterator[Path]:
    """Hold the output folder ``path`` for one command: a second cnnlens process that asks for the
    same folder is refused with one line instead of both writing into it at once.

    The lock is ``path/.cnnlens.lock`` locked with :func:`fcntl.flock` and holding the owner's pid
    (for the message). The operating system releases a ``flock`` when its process ends, however it
    ends, so a run killed with ``kill -9`` leaves no stale lock: the next run takes the file over.
    The lock file is removed when the block ends, and a folder the lock created is removed again
    if nothing was written into it.

    Raises:
        InputError: Another live process holds the folder (the message gives its pid), or ``path``
            is a file.
    """
    folder = Path(path)
    created = not folder.exists()
    output_folder(folder, flag)
    try:
        fd = _lock(folder / LOCK_FILE, flag)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        yield folder
    finally:
        (folder / LOCK_FILE).unlink(missing_ok=True)  # still held: no one can take the old file over
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the command wrote its files
                folder.rmdir()


def _lock(lock: Path, flag: str) -> int:
    """Open and ``flock`` ``lock`` without blocking; return its descriptor."""
    for _ in range(100):
        if lock.is_symlink():
            lock.unlink()  # never lock (or write the pid into) what a planted link points to
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise InputError(
                f"{flag} {lock.parent} is being written by another cnnlens run (pid {holder}); wait "
                f"for it to finish or give another {flag}"
            ) from None
        try:  # the file the previous holder removed as it finished: lock the new one instead
            current = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise InputError(f"{flag} {lock.parent}: its lock {lock.name} keeps changing; is another run starting?")
