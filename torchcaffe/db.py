"""Caffe's key-value databases, LMDB and LevelDB (``src/caffe/util/db_*.cpp``).

Data layers read records in key order and start again at the first key after the
last (Caffe's ``DataReader``: "Restarting data prefetching from start"). Tools write
them in transactions of 1000 records, as ``convert_imageset`` does. An LMDB is a
folder holding ``data.mdb`` (Caffe creates it with ``mkdir`` and refuses one that
exists); a LevelDB is a folder too. LMDB uses the ``lmdb`` package, LevelDB
``plyvel``.

Readers here open a short read transaction (or iterator) per call and remember
the next key, so a reader can move between threads (the prefetch thread and the
caller) freely.
"""
import os
import threading

from .errors import CaffeError
from .proto import caffe_pb2

__all__ = ['DBError', 'BACKENDS', 'backend_name', 'open_reader', 'open_writer', 'Reader',
           'Writer']

# DataParameter.DB values and the names Caffe's tools take on the command line.
BACKENDS = {'leveldb': caffe_pb2.DataParameter.LEVELDB, 'lmdb': caffe_pb2.DataParameter.LMDB}


class DBError(CaffeError, OSError):
    """A database is missing, unreadable, empty, or already exists when written."""


def backend_name(backend):
    """``'lmdb'`` or ``'leveldb'`` for a DataParameter.DB value or a name."""
    if isinstance(backend, str):
        name = backend.lower()
        if name not in BACKENDS:
            raise DBError('unknown database backend %r; known: lmdb, leveldb' % backend)
        return name
    for name, value in BACKENDS.items():
        if value == backend:
            return name
    raise DBError('unknown database backend %r; known: lmdb, leveldb' % (backend,))


class Reader:
    """Records of a database in key order, cycling at the end.

    Parameters
    ----------
    path : str
    backend : str or int
        ``'lmdb'`` / ``'leveldb'`` or a DataParameter.DB value.
    where : str
        Who reads (a layer), for messages.
    """

    def __init__(self, path, backend, where=''):
        self.path = os.fspath(path)
        self.backend = backend_name(backend)
        self.where = where
        prefix = '%s: ' % where if where else ''
        if not os.path.isdir(self.path):
            raise DBError('%s%s database %s not found (absolute path %s)'
                          % (prefix, self.backend, self.path, os.path.abspath(self.path)))
        try:
            handle = _open_shared(self.backend, self.path)
            if self.backend == 'lmdb':
                self._env = handle
            else:
                self._db = handle
        except Exception as err:
            raise DBError('%scannot open %s database %s: %s'
                          % (prefix, self.backend, self.path, err)) from err
        self._next_key = None
        first = self._read(None, 1)
        if not first:
            raise DBError('%s%s database %s is empty' % (prefix, self.backend, self.path))

    def _read(self, start, count):
        """Up to ``count`` (key, value) pairs from ``start`` (None: the first key) on."""
        out = []
        if self.backend == 'lmdb':
            with self._env.begin(buffers=False) as txn:
                cursor = txn.cursor()
                ok = cursor.first() if start is None else cursor.set_range(start)
                while ok and len(out) < count:
                    out.append((cursor.key(), cursor.value()))
                    ok = cursor.next()
        else:
            it = self._db.iterator() if start is None else self._db.iterator(start=start)
            try:
                for key, value in it:
                    out.append((key, value))
                    if len(out) == count:
                        break
            finally:
                it.close()
        return out

    def peek(self):
        """The (key, value) the next :meth:`next` returns, without moving."""
        got = self._read(self._next_key, 1) or self._read(None, 1)
        return got[0]

    def next(self, count=1):
        """The next ``count`` (key, value) pairs, going back to the first key after the last."""
        out = []
        while len(out) < count:
            got = self._read(self._next_key, count - len(out) + 1)
            if not got:  # past the end: restart, as Caffe's reader does
                self._next_key = None
                continue
            take = got[:count - len(out)]
            out.extend(take)
            rest = got[len(take):]
            self._next_key = rest[0][0] if rest else _after(take[-1][0])
        return out

    def skip(self, count):
        """Move past ``count`` records (cycling)."""
        if count > 0:
            self.next(count)

    def tell(self):
        """Where the next :meth:`next` starts: a key (bytes; the first key at or past it),
        or None for the first record. :meth:`seek` goes back there without reading."""
        return self._next_key

    def seek(self, key):
        """Make the next :meth:`next` start at ``key`` (from :meth:`tell`)."""
        if key is not None and not isinstance(key, bytes):
            raise DBError('%s: a database position is bytes or None, got %r'
                          % (self.path, key))
        self._next_key = key

    def __iter__(self):
        """Every (key, value) once, from the first key (independent of the position)."""
        start = None
        while True:
            got = self._read(start, 1001)
            for key, value in got[:1000]:
                yield key, value
            if len(got) <= 1000:
                return
            start = got[1000][0]

    def close(self):
        """Let go of the database (closed when its last reader in the process closes)."""
        _close_shared(self.backend, self.path)


# The lmdb package refuses to open one environment twice in a process, LevelDB
# locks its folder, and Caffe's TRAIN and TEST nets (or two layers) may read the
# same database: readers in a process share one handle, counted.
_OPEN = {}
_OPEN_LOCK = threading.Lock()


def _open_shared(backend, path):
    key = (backend, os.path.realpath(path))
    with _OPEN_LOCK:
        entry = _OPEN.get(key)
        if entry is None:
            if backend == 'lmdb':
                import lmdb
                handle = lmdb.open(path, readonly=True, lock=False, readahead=False,
                                   max_readers=126, subdir=True)
            else:
                import plyvel
                handle = plyvel.DB(path, create_if_missing=False)
            entry = _OPEN[key] = [handle, 0]
        entry[1] += 1
        return entry[0]


def _close_shared(backend, path):
    key = (backend, os.path.realpath(path))
    with _OPEN_LOCK:
        entry = _OPEN.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _OPEN[key]
                entry[0].close()


def _after(key):
    """The smallest key greater than ``key`` (in byte order)."""
    return key + b'\x00'


class Writer:
    """A new database, written in transactions of ``commit_every`` records.

    Raises
    ------
    DBError
        The path exists (Caffe's tools refuse to overwrite a database).
    """

    def __init__(self, path, backend, commit_every=1000):
        self.path = os.fspath(path)
        self.backend = backend_name(backend)
        self.commit_every = commit_every
        if os.path.exists(self.path):
            raise DBError('%s already exists; Caffe does not write into an existing database'
                          % self.path)
        self._pending = []
        if self.backend == 'lmdb':
            import lmdb
            os.makedirs(self.path)
            self._env = lmdb.open(self.path, map_size=1 << 28, subdir=True)
        else:
            import plyvel
            self._db = plyvel.DB(self.path, create_if_missing=True, error_if_exists=True)

    def put(self, key, value):
        """Add one record (written at the next commit)."""
        self._pending.append((key if isinstance(key, bytes) else key.encode(), value))
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self):
        """Write the pending records."""
        if not self._pending:
            return
        if self.backend == 'lmdb':
            import lmdb
            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        for key, value in self._pending:
                            txn.put(key, value)
                    break
                except lmdb.MapFullError:  # grow the map, as newer Caffe's LMDB writer does
                    self._env.set_mapsize(self._env.info()['map_size'] * 2)
        else:
            with self._db.write_batch() as batch:
                for key, value in self._pending:
                    batch.put(key, value)
        self._pending = []

    def close(self):
        """Commit and close."""
        self.commit()
        if self.backend == 'lmdb':
            self._env.close()
        else:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_reader(path, backend, where=''):
    """A :class:`Reader` of ``path``."""
    return Reader(path, backend, where)


def open_writer(path, backend, commit_every=1000):
    """A new :class:`Writer` at ``path``."""
    return Writer(path, backend, commit_every)
