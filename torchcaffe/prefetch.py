"""Load the next sample on a background thread while the net computes.

Not in the reference (its data layers load in place); the FCN data layers
(``seg_layers.SegDataLayer``) use it unless ``param_str`` says ``'prefetch': False``, and
Caffe's data layers (``torchcaffe.layer_types.data``) load their next batch with it.
Prefetching never changes what a layer gets, only when it is loaded.
"""
import queue
import threading

from .errors import CaffeError

__all__ = ['Prefetcher']

_NOTHING = object()


def _prefetch_worker(load, requests, results):
    """The worker loop: load each request, post (key, ok, value); None stops it."""
    while True:
        item = requests.get()
        if item is None:
            return
        key, args = item
        try:
            results.put((key, True, load(*args)))
        except BaseException as err:  # handed to the caller, never lost in the thread
            results.put((key, False, err))


class Prefetcher:
    """Runs ``load`` one request ahead on a single daemon thread.

    ``submit(key, *args)`` starts ``load(*args)`` in the worker. ``get(key, *args)``
    returns that result when the pending request was for ``key``; otherwise it
    drops whatever is pending and calls ``load(*args)`` itself. So the caller
    decides the order, and prefetching never changes what it gets. An exception
    raised by ``load`` in the worker is raised again by ``get`` in the caller's
    thread, with a note saying it came from the prefetch thread.

    Parameters
    ----------
    load : callable
        Must not refer to the prefetcher's owner, or the owner is never collected.
    name : str
        The thread's name.
    """

    def __init__(self, load, name='prefetch'):
        self._load = load
        self._requests = queue.SimpleQueue()
        self._results = queue.SimpleQueue()
        self._pending = _NOTHING
        self._closed = False
        self._thread = threading.Thread(target=_prefetch_worker, name=name, daemon=True,
                                        args=(load, self._requests, self._results))
        self._thread.start()

    @property
    def closed(self):
        return self._closed

    def submit(self, key, *args):
        """Start loading ``args`` for ``key`` (after any pending request finishes)."""
        if self._closed:
            return
        if self._pending is not _NOTHING:
            self._wait()
        self._pending = key
        self._requests.put((key, args))

    def get(self, key, *args):
        """The result for ``key``: prefetched if it was the pending request, else loaded now."""
        if self._pending is not _NOTHING:
            pending = self._pending
            _, ok, value = self._wait()
            if pending == key:
                if ok:
                    return value
                value.add_note('(raised in the prefetch thread %r while loading %r)'
                               % (self._thread.name, args[0] if len(args) == 1 else args))
                raise value
        return self._load(*args)

    def _wait(self):
        """Take the pending result; fail rather than hang if the worker is gone."""
        while True:
            try:
                result = self._results.get(timeout=0.2)
            except queue.Empty:
                if not self._thread.is_alive():
                    self._pending = _NOTHING
                    raise CaffeError('prefetch thread %r stopped without a result'
                                     % self._thread.name) from None
                continue
            self._pending = _NOTHING
            return result

    def close(self, timeout=10.0):
        """Stop the worker (after the load in progress, if any) and join it."""
        if self._closed:
            return
        self._closed = True
        self._pending = _NOTHING
        self._requests.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
