"""What the command-line tools share about their outputs and errors: one-line errors for bad input, and
files and folders written atomically, so that no reader ever sees half of one."""

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path


def fail(message):
    """Print one line to stderr and exit with status 2 (for errors in the user's input, not our bugs)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def write_json(path, data):
    """Write `data` as indented JSON, atomically (a temporary name, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


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
