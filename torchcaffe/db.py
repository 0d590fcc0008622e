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

Faults: an LMDB whose data.mdb is shorter than its meta page says is refused
before it is mapped (it would die of SIGBUS); LevelDB opens with paranoid checks
and reads with checksums verified, so damage is an error naming the database; a
:class:`Writer` builds beside the final name and renames when complete.
"""
import errno
import logging
import os
import re
import struct
import threading

from .errors import CaffeError
from .glog import LOGGER_NAME
from .proto import caffe_pb2

__all__ = ['DBError', 'BACKENDS', 'backend_name', 'check_leveldb_tables',
           'check_lmdb_size', 'open_reader', 'open_writer', 'Reader', 'Writer']

log = logging.getLogger(LOGGER_NAME + '.db')

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
        except DBError as err:
            raise DBError('%s%s' % (prefix, err)) from None
        except Exception as err:
            raise DBError('%scannot open %s database %s: %s'
                          % (prefix, self.backend, self.path, _err_text(err))) from err
        self._next_key = None
        self._last_key = self._has_tables = None
        if self.backend == 'leveldb':
            self._last_key = self._leveldb_last_key()
            self._has_tables = bool(_leveldb_tables(self._db))
        first = self._read(None, 1)
        if not first:
            raise DBError('%s%s database %s is empty' % (prefix, self.backend, self.path))

    def _leveldb_last_key(self):
        """The database's last key (None when empty), read backwards from the end.

        plyvel ends an iteration quietly when LevelDB's iterator stops on an error
        (a block that fails its checksum at the end of a table), so a forward read
        that stops before this key was cut short by damage, not by the end."""
        try:
            it = self._db.iterator(reverse=True, include_value=False, verify_checksums=True)
            try:
                return next(it, None)
            finally:
                it.close()
        except Exception as err:
            self._damaged(err)

    def _read(self, start, count):
        """Up to ``count`` (key, value) pairs from ``start`` (None: the first key) on."""
        try:
            out = self._read_unchecked(start, count)
        except DBError:
            raise
        except Exception as err:  # LMDB's MDB_CORRUPTED, LevelDB's checksum mismatches
            self._damaged(err)
        if self.backend == 'leveldb' and len(out) < count and not self._ended_well(start, out):
            if self._last_key is None:
                self._damaged('its manifest lists tables, but no record can be read (a '
                              'block failed its checksum)')
            where = ('after key %r' % out[-1][0] if out else
                     'at the first key' if start is None else 'at key %r' % start)
            self._damaged('reading stopped %s, before its last key %r (a block failed its '
                          'checksum)' % (where, self._last_key))
        return out

    def _ended_well(self, start, out):
        """Whether a LevelDB iteration from ``start`` that gave ``out`` and ended
        reached the real end (the last key), rather than a damaged block."""
        last = self._last_key
        if last is None:  # nothing read backwards either: empty, unless tables are listed
            return not out and not self._has_tables
        if out:
            return out[-1][0] >= last
        return start is not None and start > last

    def _damaged(self, err):
        prefix = '%s: ' % self.where if self.where else ''
        what = err if isinstance(err, str) else '%s: %s' % (type(err).__name__, _err_text(err))
        raise DBError('%scannot read %s database %s, it is damaged: %s'
                      % (prefix, self.backend, self.path, what)) from None

    def _read_unchecked(self, start, count):
        out = []
        if self.backend == 'lmdb':
            with self._env.begin(buffers=False) as txn:
                cursor = txn.cursor()
                ok = cursor.first() if start is None else cursor.set_range(start)
                while ok and len(out) < count:
                    out.append((cursor.key(), cursor.value()))
                    ok = cursor.next()
        else:
            # verify_checksums: LevelDB checks each block it reads against its CRC
            it = (self._db.iterator(verify_checksums=True) if start is None
                  else self._db.iterator(start=start, verify_checksums=True))
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
                check_lmdb_size(path)
                handle = lmdb.open(path, readonly=True, lock=False, readahead=False,
                                   max_readers=126, subdir=True)
            else:
                import plyvel
                # paranoid_checks: a log record failing its checksum fails the open;
                # LevelDB's default (which Caffe keeps) drops it and opens the rest.
                handle = plyvel.DB(path, create_if_missing=False, paranoid_checks=True)
                try:
                    check_leveldb_tables(path, handle)
                except BaseException:
                    handle.close()
                    raise
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


def _lmdb_meta(page):
    """(txnid, last_pgno, page_size) of the meta page whose first bytes are ``page``,
    or None when it is not an LMDB meta page as a 64-bit little-endian LMDB 0.9
    writes it."""
    # lmdb/mdb.c: a 16-byte page header (pgno, pad, flags, lower/upper), then MDB_meta:
    # magic, version, address, mapsize, two MDB_db of 48 bytes (the first's md_pad
    # holds the page size), last_pg, txnid.
    if len(page) < _META_END:
        return None
    flags, = struct.unpack_from('<H', page, 10)
    magic, version = struct.unpack_from('<II', page, 16)
    if magic != _LMDB_MAGIC or version != 1 or not flags & 0x08:  # P_META
        return None
    psize, = struct.unpack_from('<I', page, 16 + 24)
    last_pgno, txnid = struct.unpack_from('<QQ', page, 16 + 120)
    return txnid, last_pgno, psize


_LMDB_MAGIC = 0xBEEFC0DE
_META_END = 16 + 136


def check_lmdb_size(path):
    """Refuse an LMDB whose data.mdb is shorter than the pages its meta page counts.

    LMDB maps data.mdb and reads its pages in place, so a file cut short (an
    interrupted copy) kills the process with SIGBUS at the first page past the
    end, with no message. The meta pages (pages 0 and 1; LMDB uses the one with the
    larger transaction id) say the last page in use; the file must hold
    ``(last_pgno + 1) * page_size`` bytes. The header is read with ``pread``,
    never through the map. A file whose first page is not a meta page as this
    machine's LMDB writes it is left to LMDB to judge.

    Raises
    ------
    DBError
        data.mdb is truncated; the message names it and both sizes.
    """
    data = os.path.join(path, 'data.mdb')
    try:
        fd = os.open(data, os.O_RDONLY)
    except OSError:
        return  # missing or unreadable: LMDB's own open says so
    try:
        size = os.fstat(fd).st_size
        meta = _lmdb_meta(os.pread(fd, _META_END, 0))
        if meta is None:
            if size < _META_END:
                raise DBError('lmdb database %s is truncated: %s holds %d bytes, less than '
                              'an LMDB meta page' % (path, data, size))
            return
        psize = meta[2]
        if psize < 512 or psize & (psize - 1):
            return
        metas = [meta]
        second = _lmdb_meta(os.pread(fd, _META_END, psize))
        if second is not None:
            metas.append(second)
    finally:
        os.close(fd)
    txnid, last_pgno, psize = max(metas)
    need = (last_pgno + 1) * psize
    if size < max(need, 2 * psize):
        raise DBError('lmdb database %s is truncated: %s holds %d bytes, its meta page '
                      '(transaction %d) needs %d (%d pages of %d bytes); copy it again or '
                      'rebuild it' % (path, data, size, txnid, max(need, 2 * psize),
                                      max(need, 2 * psize) // psize, psize))


def check_leveldb_tables(path, handle):
    """Refuse a LevelDB whose table files are shorter than its manifest records, or
    missing: LevelDB itself finds out only when a read reaches them, and plyvel
    then ends the iteration quietly, as if the database ended there.

    Raises
    ------
    DBError
        A table file is truncated or missing; the message names it and both sizes.
    """
    for number, size in _leveldb_tables(handle):
        names = [os.path.join(path, '%06d.%s' % (number, ext)) for ext in ('ldb', 'sst')]
        present = [name for name in names if os.path.exists(name)]
        if not present:
            raise DBError('leveldb database %s is damaged: its table %s is missing'
                          % (path, names[0]))
        have = os.path.getsize(present[0])
        if have < size:
            raise DBError('leveldb database %s is truncated: %s holds %d bytes, its '
                          'manifest says %d; copy it again or rebuild it'
                          % (path, present[0], have, size))


def _leveldb_tables(handle):
    """(file number, bytes) of each table file the manifest lists."""
    listing = handle.get_property(b'leveldb.sstables') or b''
    # LevelDB's VersionSet debug listing: " <number>:<bytes>[<smallest> .. <largest>]"
    return [(int(n), int(s)) for n, s in re.findall(rb'^ (\d+):(\d+)\[', listing, re.M)]


def _err_text(err):
    """An exception's message; plyvel's are bytes."""
    if err.args and isinstance(err.args[0], bytes):
        return err.args[0].decode('utf-8', 'replace')
    return str(err)


def _after(key):
    """The smallest key greater than ``key`` (in byte order)."""
    return key + b'\x00'


class Writer:
    """A new database, built beside its final name and moved there when complete.

    Records go into ``<path>.partial-<pid>`` in transactions of ``commit_every``
    records; :meth:`close` commits the rest (synced to disk) and renames the
    folder to ``path``. A run that dies leaves only the ``.partial-<pid>``
    folder, never a database under ``path`` with some of the records: Caffe's
    ``convert_imageset`` writes under the final name, so a killed conversion
    there leaves a short database that trains without a word. The next writer
    of ``path`` finds such a leftover, says so and removes it (a leftover whose
    writer still runs, holding its lock, is refused). A write that fails (full
    disk, file-size limit, permissions) removes the partial build and raises a
    :class:`DBError` naming the database and the cause.

    Raises
    ------
    DBError
        The path exists (Caffe's tools refuse to overwrite a database), another
        run is building it, or a write failed.
    """

    def __init__(self, path, backend, commit_every=1000):
        self.path = _strip_sep(os.fspath(path))
        self.backend = backend_name(backend)
        self.commit_every = commit_every
        if os.path.lexists(self.path):
            raise DBError('%s already exists; Caffe does not write into an existing database'
                          % self.path)
        _clear_leftovers(self.path)
        self.build_path = '%s%s%d' % (self.path, PARTIAL, os.getpid())
        self._pending = []
        self._handle = None
        self._lock = None
        self._made = False
        try:
            os.mkdir(self.build_path)
            self._made = True
            self._lock = _lock_folder(self.build_path, blocking=False)
            if self.backend == 'lmdb':
                import lmdb
                self._handle = lmdb.open(self.build_path, map_size=1 << 28, subdir=True)
            else:
                import plyvel
                self._handle = plyvel.DB(self.build_path, create_if_missing=True,
                                         error_if_exists=True)
        except Exception as err:
            self._fail('cannot create', err)

    def put(self, key, value):
        """Add one record (written at the next commit)."""
        self._pending.append((key if isinstance(key, bytes) else key.encode(), value))
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self):
        """Write the pending records, synced to disk (LMDB's commit syncs; LevelDB's
        batch is written with ``sync``), so that a failure shows here."""
        if not self._pending:
            return
        if self._handle is None:
            raise DBError('%s database %s: already closed' % (self.backend, self.path))
        try:
            if self.backend == 'lmdb':
                import lmdb
                while True:
                    try:
                        with self._handle.begin(write=True) as txn:
                            for key, value in self._pending:
                                txn.put(key, value)
                        break
                    except lmdb.MapFullError:  # grow the map, as newer Caffe's writer does
                        self._handle.set_mapsize(self._handle.info()['map_size'] * 2)
            else:
                with self._handle.write_batch(sync=True) as batch:
                    for key, value in self._pending:
                        batch.put(key, value)
        except Exception as err:
            self._fail('cannot write', err)
        self._pending = []

    def close(self):
        """Commit the rest, sync, and move the database to its final name."""
        if self._handle is None:
            return
        self.commit()
        try:
            handle, self._handle = self._handle, None
            if self.backend == 'lmdb':
                handle.sync(True)
            handle.close()
            if os.path.lexists(self.path):
                raise FileExistsError('%s was created while this database was built'
                                      % self.path)
            os.rename(self.build_path, self.path)
            self._made = False  # it is the database now
            _fsync_folder(os.path.dirname(os.path.abspath(self.path)))
        except Exception as err:
            self._fail('cannot finish', err)
        self._unlock()

    def abort(self):
        """Stop and remove the partial build; nothing is left under the final name."""
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except Exception:  # already failing; the folder goes anyway
                pass
        if self._made:  # never a folder this writer did not make
            import shutil
            shutil.rmtree(self.build_path, ignore_errors=True)
            self._made = False
        self._unlock()

    def _unlock(self):
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _fail(self, doing, err):
        """Remove the partial build and raise a DBError naming the database and the cause."""
        cause = _write_cause(err, self.build_path)
        self.abort()
        raise DBError('%s %s database %s: %s; the partial build was removed'
                      % (doing, self.backend, self.path, cause)) from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


# The folder a Writer builds in: ``<final name>.partial-<pid>``.
PARTIAL = '.partial-'


def _strip_sep(path):
    stripped = path.rstrip('/' + os.sep)
    return stripped or path


def _lock_folder(folder, blocking):
    """An open descriptor of ``folder`` holding an exclusive flock, which the kernel
    drops when the process dies, however it dies; None where the lock is held."""
    import fcntl
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _clear_leftovers(path):
    """Remove the partial builds of ``path`` that killed runs left, saying so; refuse
    when one is still being built (its writer holds the lock)."""
    import glob
    import shutil
    pattern = glob.escape(path) + PARTIAL + '*'
    for folder in sorted(glob.glob(pattern)):
        pid = folder[len(path) + len(PARTIAL):]
        if not pid.isdigit() or not os.path.isdir(folder) or os.path.islink(folder):
            continue
        try:
            lock = _lock_folder(folder, blocking=False)
        except OSError:
            continue  # gone meanwhile, or unreadable: not ours to judge
        if lock is None:
            raise DBError('%s is being built by another run (process %s, in %s); wait for '
                          'it to finish, or remove %s if no such run exists'
                          % (path, pid, folder, folder))
        try:
            log.warning('%s: found %s, an unfinished build left by a run that stopped '
                        '(process %s); removing it and starting again', path, folder, pid)
            shutil.rmtree(folder)
        finally:
            os.close(lock)


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename is done
        pass
    finally:
        os.close(fd)


_ERRNO_CAUSES = {
    errno.ENOSPC: 'no space left on the device',
    errno.EDQUOT: 'the disk quota is exceeded',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'operation not permitted',
    errno.EROFS: 'the file system is read-only',
}


def _write_cause(err, folder):
    """What made a write into ``folder`` fail, in words, with the library's message.

    LMDB reports a short write as EIO ("Input/output error") whatever stopped it,
    and LevelDB's errors carry no errno, so where the error has no telling errno,
    the file-size limit and the free space are looked at: a file of the build
    near the limit, or a nearly full device.
    """
    import resource
    text = _err_text(err)
    code = getattr(err, 'errno', None)
    if code in _ERRNO_CAUSES:
        return '%s (%s)' % (_ERRNO_CAUSES[code], text)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and (
            code == errno.EFBIG or _largest_file(folder) + _NEAR_FULL >= limit):
        return 'the file-size limit (ulimit -f) of %d bytes was reached (%s)' % (limit, text)
    try:
        st = os.statvfs(folder if os.path.isdir(folder) else os.path.dirname(folder) or '.')
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < _NEAR_FULL:
        return 'the disk is full (%d bytes free) (%s)' % (free, text)
    if code == errno.EFBIG:
        return 'a file grew past the largest size the file system allows (%s)' % text
    return text


def _largest_file(folder):
    largest = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                largest = max(largest, os.path.getsize(os.path.join(root, name)))
            except OSError:
                pass
    return largest


# A file this close to the size limit, or a device with less free space than this,
# explains a failed write: LMDB writes a transaction's pages, 4 KB each, at once.
_NEAR_FULL = 1 << 20


def open_reader(path, backend, where=''):
    """A :class:`Reader` of ``path``."""
    return Reader(path, backend, where)


def open_writer(path, backend, commit_every=1000):
    """A new :class:`Writer` at ``path``."""
    return Writer(path, backend, commit_every)
