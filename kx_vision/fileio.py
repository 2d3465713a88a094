"""Writing files so that nothing a user had is lost: atomic replacement and cleaning up after killed writes.

A file is written to a hidden temporary name beside its target, `.tmp-<pid>-<name>`, then renamed over
the target (`os.replace` is atomic on POSIX and Windows): a reader sees the old file or the new one,
never half of one. A process killed mid-write leaves its temporary behind; `remove_stale_temporaries`
removes those whose process is gone.
"""

import contextlib
import os
import re
import shutil

_TMP = re.compile(r"^\.tmp-(\d+)-")


def temporary_path(path):
    """The hidden temporary name `atomic_write` uses for `path` in this process."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".tmp-{os.getpid()}-{name}")


def atomic_write(path, write):
    """Call `write(tmp_path)`, then move `tmp_path` over `path`; on failure the temporary is removed
    and `path` is untouched. Creates the parent folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(directory):
    """Remove `.tmp-<pid>-*` files and folders in `directory` left by processes that no longer run
    (a write killed half-way). Returns the names removed."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        match = _TMP.match(name)
        if not match or _process_alive(int(match.group(1))):
            continue
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(name)
    return removed
