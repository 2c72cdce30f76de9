"""Finding the files below folders as the data sources read them: hidden files and folders skipped, symlinks
followed, but every real folder and file read once."""

import os


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
