"""SIGINT / SIGHUP as requests a training loop reads once per iteration.

Caffe's ``caffe train`` hooks both signals (src/caffe/util/signal_handler.cpp): the
handler only sets a flag, and the solver asks for the requested action once per
iteration and once per test iteration. SIGHUP is looked at first. The effects are
the ``caffe`` tool's flags: "stop", "snapshot" or "none".
"""
import signal
import threading

from .errors import CaffeError

__all__ = ['SignalRequests', 'NONE', 'STOP', 'SNAPSHOT']

NONE, STOP, SNAPSHOT = 'none', 'stop', 'snapshot'


class SignalRequests:
    """SIGINT / SIGHUP as flags read once per iteration (Caffe's SignalHandler).

    Installed only in the main thread, for the duration of a ``with`` block; the
    previous handlers come back after it. An effect of "none" leaves that signal's
    handler alone.
    """

    def __init__(self, sigint_effect, sighup_effect):
        self.effects = {}
        for name, effect in (('SIGINT', sigint_effect), ('SIGHUP', sighup_effect)):
            if effect not in (STOP, SNAPSHOT, NONE):
                raise CaffeError('%s effect must be "stop", "snapshot" or "none", got %r'
                                 % (name.lower(), effect))
            signum = getattr(signal, name, None)
            if signum is not None and effect != NONE:
                self.effects[signum] = effect
        self.pending = dict.fromkeys(self.effects, False)
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.effects:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self.previous = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.pending[signum]:
            raise KeyboardInterrupt  # a second Ctrl-C before the first was handled
        self.pending[signum] = True

    def requested_action(self):
        """The action of a signal received since the last call (SIGHUP first, as Caffe)."""
        for name in ('SIGHUP', 'SIGINT'):
            signum = getattr(signal, name, None)
            if self.pending.get(signum):
                self.pending[signum] = False
                return self.effects[signum]
        return NONE


