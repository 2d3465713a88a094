"""Writing files so that nothing a user had is lost: atomic replacement and cleaning up after killed writes.

A file (`atomic_write`) or a folder (`atomic_folder`: a SavedModel, a preset) is written to a hidden temporary
name beside its target, `.tmp-<pid>-<name>`, then renamed over the target (`os.replace` is atomic on POSIX and
Windows): a reader sees the old file or the new one, never half of one. A folder cannot be renamed over
another, so an earlier folder is first moved aside to `.old-<pid>-<name>` and removed once the new one is in
place. A process killed mid-write leaves its temporary behind; `remove_stale_temporaries` removes those whose
process is gone, and puts back a folder moved aside when nothing took its place.
"""

import contextlib
import os
import re
import shutil

_TEMPORARY = re.compile(r"^\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<name>.+)$")


def temporary_path(path, kind="tmp"):
    """The hidden name beside `path` that this process writes `path` into (`kind="tmp"`) or moves an earlier
    folder at `path` aside to (`"old"`)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{kind}-{os.getpid()}-{name}")


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


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


@contextlib.contextmanager
def atomic_folder(path):
    """Yield a new, empty temporary folder beside `path` (whose parent must exist) to write into; when the
    block ends without an error it replaces `path` (nothing, an empty folder or an earlier one, see
    `replace_folder`), else it is removed and `path` is untouched."""
    tmp = temporary_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp)  # a read-only parent fails here, before anything is computed
    try:
        yield tmp
        replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(tmp, path):
    """Move the finished folder `tmp` to `path`. A folder already at `path` is moved aside first
    (`.old-<pid>-<name>`) and removed once `tmp` is in place (put back if that fails)."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    old = temporary_path(path, "old")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OverflowError:  # not a pid this system can have
        return False
    return True


def remove_stale_temporaries(directory, report=None, what="a write"):
    """Clean up in `directory` after writes killed half-way: remove the temporaries (`.tmp-<pid>-*` files and
    folders) of processes that no longer run, and put a folder that `replace_folder` had moved aside
    (`.old-<pid>-<name>`) back at `<name>` when nothing took its place (else remove it). `report(line)`, if
    given, is told each thing done (or that could not be), in one line naming `what` was killed. Returns the
    names removed or put back."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return []
    done = []
    for entry in entries:
        match = _TEMPORARY.match(entry)
        if not match or _process_alive(int(match["pid"])):
            continue
        path, target = os.path.join(directory, entry), os.path.join(directory, match["name"])
        try:
            if match["kind"] == "old" and not os.path.lexists(target):
                os.rename(path, target)
                line = f"restored {target} from {entry}, left by {what} that was killed while replacing it"
            else:
                _remove(path)
                line = f"removed {path}, left by {what} that was killed (process {match['pid']})"
            done.append(entry)
        except OSError as error:
            line = f"could not remove {path}, left by {what} that was killed: {error.strerror or error}"
        if report is not None:
            report(line)
    return done
