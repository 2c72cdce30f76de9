"""What the command-line tools share about their outputs and errors: one-line errors for bad input, and
files and folders written atomically, so that no reader ever sees half of one."""

import contextlib
import fcntl
import io
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path


def fail(message):
    """Print one line to stderr and exit with status 2 (for errors in the user's input, not our bugs)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def class_index(label, class_names, model):
    """The index of the class named `label` (--label) among `class_names` of the export at `model`, or None for
    no --label; exits with one line if the model is not class-conditional or has no such class."""
    if label is None:
        return None
    if not class_names:
        fail(f"--label {label}: the model at {model} is not class-conditional")
    if label not in class_names:
        fail(f"--label {label}: expected one of {', '.join(class_names)}")
    return class_names.index(label)


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

MARKER = ".brain_vqvae"  # in every folder the tools create: the JSON of what the folder is and which run wrote it
KINDS = {"export": "an export of train.py", "checkpoints": "train.py's checkpoints",
         "predictions": "predict.py's outputs", "figures": "the figures of the documentation"}


def mark_as_ours(folder, kind, owner=None):
    """Create `folder` if needed and mark it as written by this project's tools: `kind` (one of KINDS) says
    what it holds, `owner` which run it belongs to where that is not the folder itself (for checkpoints: the
    --out of their run), and the command line that wrote it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if not marker.exists():
        record = {"written_by": "brain_vqvae", "kind": kind, "owner": owner, "command": shlex.join(sys.argv)}
        write_json(marker, {key: value for key, value in record.items() if value is not None})


def marker_of(folder):
    """The marker's record of `folder` as a dict ({} if unreadable; its "kind" may be missing), or None if
    the tools did not write `folder`."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def is_ours(folder):
    """Whether `folder` was written by this project's tools (it has their marker)."""
    return (Path(folder) / MARKER).is_file()


def describe(record):
    """What a folder with this marker `record` is, for messages: "train.py's checkpoints of --out m1", ..."""
    kind = record.get("kind")
    text = KINDS.get(kind, "an output folder of these tools")
    return f"{text} of --out {record['owner']}" if kind == "checkpoints" and record.get("owner") else text


def is_inside(path, folder):
    """Whether `path` is `folder` or lies inside it, symbolic links resolved."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def enclosing_output(path):
    """The nearest folder above `path` that the tools wrote (each is theirs as a whole), or None."""
    for folder in Path(os.path.abspath(path)).parents:
        if is_ours(folder):
            return folder
    return None


def check_output_folder(flag, path, purpose, kind):
    """Exit with one line unless `path` can become (or be replaced by) one of this tool's output folders of
    `kind`: absent, empty, or already one of `kind`; never a file, the working directory or one of its
    parents, a folder inside one of the tools' folders, or somewhere this process cannot write."""
    path = Path(path)
    where = Path(os.path.abspath(path))
    if where == Path(os.getcwd()) or where in Path(os.getcwd()).parents:
        fail(f"{flag} {path}: expected a new folder for {purpose}, not the working directory or one above it")
    if path.exists() and not path.is_dir():
        fail(f"{flag} {path}: a file is there; expected a folder for {purpose} (it would be replaced)")
    enclosing = enclosing_output(path)
    if enclosing is not None:
        fail(f"{flag} {path}: inside {enclosing}, {describe(marker_of(enclosing))}; choose a folder outside it "
             f"for {purpose}")
    record = marker_of(path)
    if record is not None and record.get("kind") != kind:
        fail(f"{flag} {path}: holds {describe(record)}; expected a new or empty folder, or {KINDS[kind]}, for "
             f"{purpose} (nothing was changed)")
    if record is None and path.is_dir() and any(path.iterdir()):
        fail(f"{flag} {path}: a folder that this tool did not write is there; choose a new or empty folder "
             f"for {purpose} (nothing was changed)")
    check_writable(flag, path)


def check_apart(flag, path, inputs):
    """Exit with one line unless the output folder `path`, replaced as a whole when its run ends, and each of
    `inputs` ((what, path) of what the run reads: "--data", ...) lie apart: neither inside the other."""
    for what, given in inputs:
        if is_inside(path, given):
            fail(f"{flag} {path}: inside {what} {given}, whose files are read as input; expected a place apart "
                 f"from it")
        if is_inside(given, path):
            fail(f"{flag} {path}: {what} {given} is inside it, and {flag} is replaced as a whole when the run "
                 f"ends; expected a folder apart from it")


@contextlib.contextmanager
def replaced_folder(path, kind, flag="--out"):
    """A new folder of `kind` to write a run's outputs in: a temporary one beside `path`, which replaces `path`
    as a whole when the run succeeds, so that no earlier run's files are mixed with these and a failed run
    leaves `path` as it was. `path` is locked meanwhile (RunLock), so a second run on it is refused; a line says
    whose outputs were replaced."""
    path = Path(path)
    earlier = marker_of(path) if path.is_dir() and set(os.listdir(path)) - {MARKER, "lock"} else None
    with RunLock(path, kind, flag=f"{flag} {path}"), atomic_directory(path) as folder:
        mark_as_ours(folder, kind)
        yield folder
    if earlier is not None:
        print(f"Replaced the earlier outputs in {path} (of `{earlier.get('command', 'an earlier run')}`).")


def final_path(path, folder, final):
    """Where `path`, written in replaced_folder's `folder`, is once that folder has replaced `final`."""
    path = Path(path)
    return Path(final) / path.relative_to(folder) if folder in path.parents else path


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


def check_writable(flag, path, new_file=False):
    """Exit with one line unless this process can write `path`: a folder, created where missing, under its
    nearest existing parent folder; or with `new_file`, a file in a folder that is already there."""
    if new_file:
        existing = Path(os.path.abspath(path)).parent
        if not existing.is_dir():
            fail(f"{flag} {path}: no folder {existing} to write it in")
    else:
        existing = nearest_existing(path)
    if not existing.is_dir():
        fail(f"{flag} {path}: {existing} is a file, not a folder")
    try:  # a real write: permissions alone do not tell for root, read-only mounts or full disks
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        fail(f"{flag} {path}: cannot write in {existing} ({error.strerror or error})")


class RunLock:
    """An exclusive OS lock on `folder`/lock, held while a run writes there (a context manager); `folder` is
    created and marked as one of `kind` (for `owner`) if needed.

    The kernel releases it when the process ends in any way, SIGKILL included, so a stale lock file never
    blocks the next run. The file holds the holder's pid and command line, for the message that refuses a
    second run. On leaving, the lock file goes; so does the folder, and any parent folder created for it, if
    the run wrote no file there (it failed early).
    """

    def __init__(self, folder, kind="checkpoints", owner=None, flag="--out"):
        self.folder = Path(folder)
        self.path = self.folder / "lock"
        self.kind, self.owner, self.flag = kind, owner, flag
        self.created = None  # the highest folder that this lock created, if any
        self.marked = False  # whether this lock wrote the folder's marker
        self.handle = None

    def __enter__(self):
        missing = [folder for folder in (self.folder, *self.folder.parents) if not folder.exists()]
        self.created = missing[-1] if missing else None
        self.marked = not is_ours(self.folder)
        mark_as_ours(self.folder, self.kind, self.owner)
        while self.handle is None:
            handle = open(self.path, "a+")
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                fail(f"{self.flag}: another run is writing in {self.folder} ({holder}); wait for it to end, or "
                     f"choose another --out")
            # Another process may have removed the file between our open and our lock: lock the one on disk.
            if self._holds(handle):
                self.handle = handle
            else:
                handle.close()
        self.handle.truncate(0)
        self.handle.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
        self.handle.flush()
        return self

    def _holds(self, handle):
        """Whether the open `handle` is the lock file on disk now (not one removed since)."""
        try:
            return os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc):
        # While still locked, so that no other run's lock file or folder is removed.
        if self._holds(self.handle):
            self.path.unlink()
        self._remove_if_unused()
        self.handle.close()
        return False

    def _remove_if_unused(self):
        """If the run wrote no file but the marker in the folder: remove the folder and the parents created for
        it if this lock created it, else the empty folders in it and the marker if this lock wrote it."""
        if not self.folder.is_dir() or not all(path.name == MARKER or path.is_dir()
                                               for path in self.folder.rglob("*")):
            return
        if self.created is None:
            for path in sorted(self.folder.rglob("*"), reverse=True):  # what is inside a folder comes first
                if path.is_dir():
                    path.rmdir()
            if self.marked:
                (self.folder / MARKER).unlink(missing_ok=True)
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in self.folder.parents:
            if not is_inside(parent, self.created) or any(parent.iterdir()):
                break
            parent.rmdir()
