"""Finding the files below folders: as the data sources read them (hidden files and folders skipped, symlinks
followed, but every real folder and file read once), and as predict.py's file modes mirror them (each input's
output at the same place below the output folder)."""

import os
from pathlib import Path

from utils import fail


def files_below(roots, wanted):
    """Per root, the sorted files below it whose names `wanted` accepts. Symlinks are followed, but each real
    folder is read once, where it is first reached (the roots first, then top-down in name order): a link to
    a folder already read, or to one that holds it (a loop such as `ln -s .. loop`), is skipped. A file
    reached twice is listed once, under the first root that reaches it."""
    folders_read, files_read, found = {os.path.realpath(root) for root in roots}, set(), []
    for root in roots:
        below = []
        for parent, folders, files in os.walk(root, followlinks=True):
            folders[:] = _folders_to_walk(parent, folders, folders_read)
            for name in sorted(files):
                path = os.path.join(parent, name)
                if wanted(name) and not name.startswith(".") and os.path.isfile(path) \
                        and os.path.realpath(path) not in files_read:
                    files_read.add(os.path.realpath(path))
                    below.append(path)
        found.append(sorted(below))
    return found


def _folders_to_walk(parent, folders, folders_read):
    """The subfolders of `parent` not hidden, not read yet and not holding `parent`; marks them read."""
    here, kept = os.path.realpath(parent), []
    for name in sorted(folders):
        real = os.path.realpath(os.path.join(parent, name))
        if name.startswith(".") or real in folders_read or os.path.commonpath([here, real]) == real:
            continue
        folders_read.add(real)
        kept.append(name)
    return kept


def mirrored_inputs(flag, given, is_input):
    """[(file, output path relative to the output folder, without suffix)] for each file in `given` and each
    file below each folder in it for which `is_input(path)`; exits with one line (naming `flag`) if there is
    none, or if two would write one output."""
    found = []
    for name in given:
        path = Path(name)
        if path.is_dir():
            found += [(file, file.relative_to(path).with_suffix("")) for file in sorted(path.rglob("*"))
                      if file.is_file() and not file.name.startswith(".") and is_input(file)]
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            fail(f"{flag} {name}: no such file or folder")
    if not found:
        fail(f"{flag} {' '.join(given)}: no input files there")
    outputs = [output for _, output in found]
    if len(set(outputs)) < len(outputs):
        twice = next(output for output in outputs if outputs.count(output) > 1)
        fail(f"{flag}: two inputs would both be written as {twice}; give them in separate runs")
    return found


def output_path(out, name):
    """`out`/`name`, its folders made."""
    path = Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
