"""A progress bar for long loops over files (scoring, inference, downloads).

Writes to stderr, redraws in place on a terminal and prints a line every 10% otherwise
(logs, CI), so long work always shows it is moving.
"""
import sys
import time


class Progress:
    """Track ``done`` out of ``total`` units and draw ``desc [#####    ] done/total rate eta``.

    Parameters
    ----------
    total : int or None
        Units expected; None when unknown (then no bar or ETA).
    desc : str
        Shown before the bar.
    unit : str
        'it' for items; 'B' formats counts as bytes (KiB, MiB, ...).
    stream : file, optional
        Defaults to ``sys.stderr``; pass ``False`` to draw nothing.
    """

    def __init__(self, total=None, desc='', unit='it', stream=None, initial=0):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.done = self._start_done = initial
        self.start = self._last_draw = time.monotonic()
        self._tty = bool(self.stream) and hasattr(self.stream, 'isatty') and self.stream.isatty()
        self._last_decile = -1

    def update(self, n=1):
        """Add ``n`` units and redraw (at most 10 times a second on a terminal)."""
        self.done += n
        now = time.monotonic()
        if self._tty and (now - self._last_draw > 0.1 or self.done == self.total):
            self._last_draw = now
            self.stream.write('\r' + self.line())
            self.stream.flush()
        elif not self._tty and self.stream and self.total:
            decile = int(10 * self.done / self.total)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self.line() + '\n')

    def close(self):
        """Finish the bar's line."""
        if self._tty:
            self.stream.write('\r' + self.line() + '\n')
            self.stream.flush()

    def line(self):
        """The current bar as text."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.done - self._start_done) / elapsed
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = '#' * int(frac * 20)
            parts.append('[%-20s] %3d%%' % (bar, frac * 100))
            parts.append('%s/%s' % (self._fmt(self.done), self._fmt(self.total)))
            if rate > 0 and self.done < self.total:
                parts.append('eta %s' % _duration((self.total - self.done) / rate))
        else:
            parts.append(self._fmt(self.done))
        parts.append('%s/s' % self._fmt(rate))
        return ' '.join(parts)

    def _fmt(self, n):
        if self.unit != 'B':
            return '%d' % n if float(n).is_integer() else '%.1f' % n
        for unit in ('B', 'KiB', 'MiB', 'GiB'):
            if abs(n) < 1024 or unit == 'GiB':
                return '%.1f %s' % (n, unit) if unit != 'B' else '%d B' % n
            n /= 1024.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(iterable, total=None, desc='', stream=None):
    """Yield from ``iterable`` while drawing a :class:`Progress` bar.

    >>> list(progress(range(3), stream=False))
    [0, 1, 2]
    """
    if total is None and hasattr(iterable, '__len__'):
        total = len(iterable)
    with Progress(total, desc, stream=stream) as bar:
        for item in iterable:
            yield item
            bar.update()


def _duration(seconds):
    seconds = int(seconds)
    if seconds < 3600:
        return '%d:%02d' % divmod(seconds, 60)
    return '%d:%02d:%02d' % (seconds // 3600, seconds % 3600 // 60, seconds % 60)
