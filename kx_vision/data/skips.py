"""The one log of what the training pipelines skip: files that cannot be decoded, images smaller than the patch,
image/mask pairs that cannot be used.

A skipped item is remembered (an item found unusable is never decoded again) and counted in the pass that met
it; `report(when)`, called by the pipelines at the end of each epoch, says in one `SkippedDataWarning` per kind
what the epoch skipped; `report()` closes a single pass over a list (a folder's header scan, a validation or
evaluation set read once). With `each`, the first time an item is skipped is also warned about, naming it.
Warnings are the one channel: a caller can filter, record or turn them into errors as any Python warning.
"""

import contextlib
import os
import threading
import warnings

SHOWN = 5  # names listed in a report

# The report of each kind: {n} items skipped since the last report, {total} different ones so far, of {count}.
REPORTS = {
    "unreadable": "skipped {n} unreadable {what} file(s) {when} ({total} of {count} so far), first: {first}",
    "undecodable": "skipped {n} {what}(s) {when} that could not be decoded ({total} so far), first: {first}",
    "small": "skipped {n} {what}(s) {when} smaller than the {patch}x{patch} patch ({total} so far), first: {first}",
    "unusable": "{when}: skipped {n} unusable {what}(s) of {count} ({names})",
}
# The report of a single pass over a list, `report()`: {n} items skipped of {count}.
ONCE = {
    "unreadable": "skipped {n} unreadable {what} file(s) of {count}",
    "small": "skipped {n} of {count} {what}s smaller than the {patch}x{patch} patch",
    "unusable": "skipped {n} unreadable {what}(s) of {count}",
}
EACH = "skipping {what} {name}: {message}"


class SkippedDataWarning(UserWarning):
    """Items a training pipeline skipped (see `kx_vision.data.skips`)."""


def names(paths, limit=SHOWN):
    """The first `limit` file names of `paths`, and how many more."""
    shown = ", ".join(os.path.basename(str(p)) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


class SkipLog:
    """What one pipeline skipped (thread-safe: decoding threads write to it).

    Args:
        what: words for messages ("training image").
        count: items in the set, for reports (None where unknown).
        each: also warn the first time an item is skipped: True (`EACH`), or a format of `what`, `name` and
            `message` (where the message names the file already).
        patch: side of the training patches, for the report of small images.
    """

    def __init__(self, what, count=None, each=False, patch=None):
        self.what, self.count, self.patch = what, count, patch
        self.each = EACH if each is True else each
        self._lock = threading.Lock()
        self._known = {}  # name -> (kind, message): skipped, never decoded again
        self._period = {}  # name -> (kind, message): skipped since the last report
        self._events = {}  # kind -> times skipped
        self._muted = False

    def skip(self, name, message, kind, announce=True):
        """Record that item `name` was skipped (`kind` as in `REPORTS`) because of `message`; with `each` and
        `announce`, warn about it the first time."""
        with self._lock:
            first = name not in self._known
            self._known.setdefault(name, (kind, message))
            self._period.setdefault(name, (kind, message))
            self._events[kind] = self._events.get(kind, 0) + 1
            announce = announce and first and self.each and not self._muted
        if announce:
            warnings.warn(self.each.format(what=self.what, name=name, message=message), SkippedDataWarning,
                          stacklevel=3)

    def known(self, name):
        """Whether `name` was skipped before; if so it is counted again (the pass met it)."""
        with self._lock:
            found = self._known.get(name)
            if found is None:
                return False
            self._period.setdefault(name, found)
            self._events[found[0]] = self._events.get(found[0], 0) + 1
            return True

    @property
    def skipped(self):
        """`{name: message}` of every item skipped so far."""
        with self._lock:
            return {name: message for name, (_, message) in self._known.items()}

    def first(self):
        """The message of the first item skipped, or None."""
        with self._lock:
            return next((message for _, message in self._known.values()), None)

    def events(self, *kinds):
        """Times items of `kinds` were skipped so far (each pass that met them)."""
        with self._lock:
            return sum(self._events.get(kind, 0) for kind in kinds)

    @contextlib.contextmanager
    def muted(self):
        """No `each` warnings inside (a probe that may raise a clearer error instead)."""
        self._muted = True
        try:
            yield
        finally:
            self._muted = False

    def restart(self, announce=True):
        """Forget what the current period skipped (a probe's reads); with `announce`, warn about each item known
        to be unusable, as `each` would have."""
        with self._lock:
            self._period.clear()
            self._events.clear()
            known = list(self._known.items())
        if announce and self.each:
            for name, (_, message) in known:
                warnings.warn(self.each.format(what=self.what, name=name, message=message), SkippedDataWarning,
                              stacklevel=3)

    def report(self, when=None):
        """One warning per kind about what was skipped since the last report (`when`: "in epoch 3"; None: the
        end of a single pass over the list, `ONCE`); how many items that was."""
        with self._lock:
            period, self._period = self._period, {}
            totals = {}
            for kind, _ in self._known.values():
                totals[kind] = totals.get(kind, 0) + 1
        by_kind = {}
        for name, (kind, message) in period.items():
            by_kind.setdefault(kind, []).append((name, message))
        for kind, found in sorted(by_kind.items(), key=lambda entry: list(REPORTS).index(entry[0])):
            text = (ONCE if when is None else REPORTS)[kind].format(n=len(found), what=self.what, when=when, total=totals.get(kind, len(found)),
                                        count=self.count, first=found[0][1], patch=self.patch,
                                        names=names(sorted(name for name, _ in found)))
            warnings.warn(text, SkippedDataWarning, stacklevel=2)
        return len(period)
