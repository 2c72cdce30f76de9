"""What the command-line tools share about their outputs and errors: one-line errors for bad input, and
files and folders written atomically, so that no reader ever sees half of one."""

import contextlib
import fcntl
import io
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path


def fail(message):
    """Print one line to stderr and exit with status 2 (for errors in the user's input, not our bugs)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def first_line(error):
    """The first line of an error's message, with its type, at most 200 characters: for one-line errors that
    quote what a library raised."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def write_json(path, data):
    """Write `data` as indented, strict JSON (NaN and infinities become null), atomically (a temporary name,
    then a rename)."""
    write_bytes(path, (json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def write_bytes(path, data):
    """Write `data` to `path` atomically: readers, and a run killed at any moment, see no partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_figure(figure, path, **options):
    """Write a matplotlib figure as a PNG at `path` atomically (`options` go to savefig)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **options)
    write_bytes(path, buffer.getvalue())


def _finite(data):
    """`data` with every NaN or infinite float replaced by None, which strict JSON readers accept."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary folder beside `path`; on success it replaces `path`, on error it is removed.

    Readers of `path` see the old folder or the complete new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# Outputs that never destroy what the tool did not write

MARKER = ".brain_vqvae"  # in every folder the tools create; says the folder and what the tools write in it are theirs


def mark_as_ours(folder, kind):
    """Create `folder` if needed and mark it as written by this project's tools (`kind`: what it holds)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"written_by": "brain_vqvae", "kind": kind}) + "\n")


def is_ours(folder):
    """Whether `folder` was written by this project's tools (it has their marker)."""
    return (Path(folder) / MARKER).is_file()


def check_output_folder(flag, path, purpose, may_exist=True):
    """Exit with one line unless `path` can become (or be replaced by) one of this tool's output folders:
    absent, empty, or already this tool's; never a file, the working directory or one of its parents, and
    somewhere this process can write."""
    path = Path(path)
    where = Path(os.path.abspath(path))
    if where == Path(os.getcwd()) or where in Path(os.getcwd()).parents:
        fail(f"{flag} {path}: expected a new folder for {purpose}, not the working directory or one above it")
    if path.exists() and not path.is_dir():
        fail(f"{flag} {path}: a file is there; expected a folder for {purpose} (it would be replaced)")
    if path.is_dir() and any(path.iterdir()) and not (may_exist and is_ours(path)):
        fail(f"{flag} {path}: a folder that this tool did not write is there; choose a new or empty folder "
             f"for {purpose} (nothing was changed)")
    check_writable(flag, path)


def check_figure_path(flag, path):
    """Exit with one line unless `path` is a new PNG or one in a folder of this tool's (such as assets/)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        fail(f"{flag} {path}: expected a .png path")
    if not path.parent.is_dir():
        fail(f"{flag} {path}: no folder {path.parent}")
    if path.exists() and not is_ours(path.parent):
        fail(f"{flag} {path}: a file this tool did not write; choose a new name")


def nearest_existing(path):
    """`path` made absolute, or its nearest parent that exists."""
    existing = Path(os.path.abspath(path))
    while not existing.exists():
        existing = existing.parent
    return existing


def check_free_space(flag, path, needed, what):
    """Exit with one line if `needed` bytes (of `what`) may not fit on the disk where `path` would be written."""
    existing = nearest_existing(path)
    free = shutil.disk_usage(existing).free
    if needed > free:
        fail(f"{flag}: {what} may need {needed / 1e9:.1f} GB, and {existing} has {free / 1e9:.1f} GB free")


def check_writable(flag, path):
    """Exit with one line unless `path`, or its nearest existing parent folder, is a folder this process can
    write into."""
    existing = nearest_existing(path)
    if not existing.is_dir():
        fail(f"{flag} {path}: {existing} is a file, not a folder")
    try:  # a real write: permissions alone do not tell for root, read-only mounts or full disks
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        fail(f"{flag} {path}: cannot write in {existing} ({error.strerror or error})")


class RunLock:
    """An exclusive OS lock on `folder`/lock, held while a run writes there (a context manager).

    The kernel releases it when the process ends in any way, SIGKILL included, so a stale lock file never
    blocks the next run. The file holds the holder's pid and command line, for the message that refuses a
    second run.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / "lock"
        self.created_folder = False
        self.handle = None

    def __enter__(self):
        self.created_folder = not self.folder.exists()
        mark_as_ours(self.folder, "checkpoints")
        while self.handle is None:
            handle = open(self.path, "a+")
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                fail(f"{self.folder}: another run is writing there ({holder}); wait for it to end, or choose "
                     f"another --out")
            # Another process may have removed the file between our open and our lock: lock the one on disk.
            if os.path.exists(self.path) and os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino:
                self.handle = handle
            else:
                handle.close()
        self.handle.truncate(0)
        self.handle.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        # A run that created the folder and wrote nothing else there (it failed early) leaves no trace.
        if self.created_folder and {p.name for p in self.folder.iterdir()} <= {"lock", MARKER}:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.handle.close()
        return False
