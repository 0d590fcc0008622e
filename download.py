"""Fetch a model folder's published weights from its ``caffemodel-url``.

    python download.py voc-fcn8s       # -> voc-fcn8s/fcn8s-heavy-pascal.caffemodel
    python download.py ilsvrc-nets     # -> ilsvrc-nets/VGG_ILSVRC_16_layers.caffemodel
    python download.py voc-fcn8s --url https://mirror.example/fcn8s-heavy-pascal.caffemodel
    python download.py voc-fcn8s --force      # fetch again even if the file is there

The file is written next to ``caffemodel-url`` under the URL's file name. Bytes go
to ``<file>.part`` first; an interrupted download resumes from it on the next run
(an HTTP Range request; a server that ignores it makes the download start over).
The ``.part`` file replaces the target only once it has the size the server
announced and passes the checksum, so a failed or partial download never
replaces a good file.

Checksums live in ``<folder>/caffemodel-sha256``, in ``sha256sum`` format (check
by hand with ``cd <folder> && sha256sum -c caffemodel-sha256``) plus a
``# size <file> <bytes>`` line. When the folder has none, the first complete
download records its SHA-256 and size there, and from then on downloads and
files placed by hand are verified against it (commit the file to share it).

The reference's host, dl.caffe.berkeleyvision.org, has been down at times. When
it cannot be reached, get the file elsewhere and either pass its address with
``--url`` or put the file at the printed path yourself; running this script again
then verifies it against ``caffemodel-sha256`` when a checksum is recorded.
"""
import argparse
import contextlib
import hashlib
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

from torchcaffe.errors import CaffeError
from torchcaffe.io import atomic_path
from torchcaffe.progress import Progress

__all__ = ['DownloadError', 'Unreachable', 'Interrupted', 'read_url', 'target_path',
           'read_checksums', 'write_checksum', 'sha256_file', 'fetch', 'unreachable_message',
           'download']

URL_FILE = 'caffemodel-url'
SUM_FILE = 'caffemodel-sha256'
CHUNK = 1 << 20
REFERENCE_HOST = 'dl.caffe.berkeleyvision.org'
USER_AGENT = 'fcn-download/1 (Python urllib)'


class DownloadError(CaffeError):
    """The weights could not be fetched or did not pass the checks; the message says why."""


class Unreachable(DownloadError):
    """No answer from the server: refused, unknown host, timed out; ``reason`` says which."""

    def __init__(self, url, reason):
        super().__init__('cannot reach %s: %s' % (url, reason))
        self.url, self.reason = url, reason


class Interrupted(DownloadError):
    """The transfer stopped early; ``size`` bytes are in the partial file."""

    def __init__(self, url, size, total, reason):
        super().__init__('download of %s stopped after %d%s bytes (%s)'
                         % (url, size, '' if total is None else ' of %d' % total, reason))
        self.url, self.size, self.total, self.reason = url, size, total, reason


# ------------------------------------------------------------------------ the folder

def read_url(folder):
    """The first non-empty line of ``<folder>/caffemodel-url``."""
    path = os.path.join(folder, URL_FILE)
    if not os.path.isfile(path):
        raise DownloadError('%s not found: %s is not a model folder with published weights'
                            % (path, folder))
    with open(path, encoding='utf-8') as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines or not urllib.parse.urlparse(lines[0]).scheme:
        raise DownloadError('%s: expected a URL on its first line' % path)
    return lines[0]


def target_path(folder, url):
    """``<folder>/<the URL's file name>``."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise DownloadError('%s has no file name to save it under' % url)
    return os.path.join(folder, urllib.parse.unquote(name))


def read_checksums(path):
    """``{file name: (sha256 hex, size or None)}`` from a ``caffemodel-sha256`` file.

    Lines are ``<sha256>  <name>`` (``sha256sum`` output) and ``# size <name> <bytes>``;
    other ``#`` lines are comments. A missing file gives ``{}``.
    """
    if not os.path.isfile(path):
        return {}
    sums, sizes = {}, {}
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            size = re.match(r'#\s*size\s+(.+?)\s+(\d+)$', line)
            if size:
                sizes[size.group(1)] = int(size.group(2))
            elif line and not line.startswith('#'):
                entry = re.match(r'([0-9a-fA-F]{64}) [ *](.+)$', line)
                if not entry:
                    raise DownloadError('%s:%d: expected "<sha256>  <file name>", got %r'
                                        % (path, number, line))
                sums[entry.group(2)] = entry.group(1).lower()
    return {name: (sha, sizes.get(name)) for name, sha in sums.items()}


def write_checksum(path, name, sha256, size):
    """Record ``name``'s checksum and size in ``path`` (atomically, keeping other entries)."""
    entries = read_checksums(path)
    entries[name] = (sha256, size)
    lines = ['# SHA-256 and size of the published weights, recorded by download.py from the',
             '# first complete download; later downloads and files placed by hand are checked',
             '# against them. Check by hand: sha256sum -c %s (in this folder).' % SUM_FILE]
    for entry, (sha, entry_size) in sorted(entries.items()):
        if entry_size is not None:
            lines.append('# size %s %d' % (entry, entry_size))
        lines.append('%s  %s' % (sha, entry))
    with atomic_path(path) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write('\n'.join(lines) + '\n')


def sha256_file(path, stream=None):
    """The SHA-256 hex digest of a file, with a progress bar for big ones."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, 'rb') as f, Progress(size, 'sha256', unit='B',
                                         stream=stream if size > 64 * CHUNK else False) as bar:
        for block in iter(lambda: f.read(CHUNK), b''):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _verify(path, record, stream=None):
    """None when ``path`` matches ``(sha256, size)``, else what differs."""
    sha, size = record
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        return '%d bytes, %s records %d' % (actual, SUM_FILE, size)
    digest = sha256_file(path, stream)
    if digest != sha:
        return 'SHA-256 %s, %s records %s' % (digest, SUM_FILE, sha)
    return None


# ------------------------------------------------------------------------ HTTP

def _content_range(value):
    """``(start, total)`` from ``bytes start-end/total`` (total None for ``*``)."""
    match = re.match(r'\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*$', value or '')
    if not match:
        return None, None
    total = match.group(2)
    return int(match.group(1)), (None if total == '*' else int(total))


def _unsatisfiable_total(value):
    """The total from a 416 answer's ``bytes */total``."""
    match = re.match(r'\s*bytes\s+\*/(\d+)\s*$', value or '')
    return int(match.group(1)) if match else None


def _open(url, start, timeout):
    headers = {'User-Agent': USER_AGENT}
    if start:
        headers['Range'] = 'bytes=%d-' % start
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def fetch(url, part, timeout=30.0, expected_size=None, stream=None):
    """Download ``url`` into ``part``, resuming from what ``part`` already holds.

    Parameters
    ----------
    url : str
    part : str
        The partial file; appended to when the server honours the Range request,
        rewritten from the start when it sends the whole file instead.
    timeout : float
        Seconds allowed for connecting and for each read.
    expected_size : int, optional
        A recorded size: a server announcing another size is refused before any
        byte is written.
    stream : file or False, optional
        Where the progress bar and notes go (stderr by default).

    Returns
    -------
    int
        The size of ``part``, equal to the server's announced size when it gave one.

    Raises
    ------
    Unreachable
        No connection (refused, unknown host, timed out).
    Interrupted
        The transfer stopped early; ``part`` keeps what arrived.
    DownloadError
        An HTTP error, a size that differs from the announced or recorded one.
    OSError
        The partial file cannot be written.
    """
    notes = sys.stderr if stream is None else stream
    have = os.path.getsize(part) if os.path.exists(part) else 0
    try:
        response = _open(url, have, timeout)
    except urllib.error.HTTPError as err:
        return _http_error(err, url, part, have, timeout, expected_size, stream)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise Unreachable(url, _reason(err)) from None
    with response:
        mode, total = _choose_mode(response, have, part, notes)
        if mode is None:  # a 206 starting elsewhere than asked: ask for the whole file
            response.close()
            os.remove(part)
            return fetch(url, part, timeout, expected_size, stream)
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError('%s offers %d bytes but %s records %d: not the recorded file'
                                % (url, total, SUM_FILE, expected_size))
        start = have if mode == 'ab' else 0
        name = os.path.basename(part)[:-len('.part')] if part.endswith('.part') else part
        with open(part, mode) as f, Progress(total or expected_size, name, unit='B',
                                             stream=stream, initial=start) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    f.flush()
                    raise Interrupted(url, f.tell(), total, _reason(err)) from None
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    size = os.path.getsize(part)
    if total is not None and size != total:
        if size > total:
            os.remove(part)
            raise DownloadError('%s sent %d bytes, more than the %d it announced; removed %s'
                                % (url, size, total, part))
        raise Interrupted(url, size, total, 'connection closed early')
    return size


def _http_error(err, url, part, have, timeout, expected_size, stream):
    """A 416 to a resume request: the partial file is complete, or does not fit."""
    err.close()
    if err.code == 416 and have:
        total = _unsatisfiable_total(err.headers.get('Content-Range'))
        if total == have and (expected_size is None or total == expected_size):
            return have  # the last run got every byte but stopped before the checks
        notes = sys.stderr if stream is None else stream
        if notes:
            notes.write('%s does not fit the file on the server; starting over\n' % part)
        os.remove(part)
        return fetch(url, part, timeout, expected_size, stream)
    raise DownloadError('%s answered HTTP %d %s' % (url, err.code, err.reason))


def _choose_mode(response, have, part, notes):
    """``('ab' | 'wb', total size or None)``, or ``(None, None)`` to start over."""
    length = response.headers.get('Content-Length')
    length = int(length) if length and length.isdigit() else None
    if have and response.status == 206:
        start, total = _content_range(response.headers.get('Content-Range'))
        if start != have:
            if notes:
                notes.write('the server resumed at byte %s, not %d; starting over\n'
                            % (start, have))
            return None, None
        if total is None and length is not None:
            total = have + length
        if notes:
            notes.write('resuming %s at byte %d\n' % (part, have))
        return 'ab', total
    if response.status != 200:
        raise DownloadError('%s answered HTTP %d %s (expected 200 or 206)'
                            % (response.url, response.status, response.reason))
    if have and notes:
        notes.write('the server ignored the request to resume (HTTP Range); starting over\n')
    return 'wb', length


# ------------------------------------------------------------------------ the whole job

def unreachable_message(url, reason, target, recorded):
    """One line: the host cannot be reached, and what to do instead.

    ``recorded`` says whether ``caffemodel-sha256`` holds the target's checksum,
    i.e. whether a file placed by hand can be verified.
    """
    parts = urllib.parse.urlparse(url)
    note = (' (the reference\'s host, which has been down at times)'
            if parts.hostname == REFERENCE_HOST else '')
    if recorded:
        manual = 'place it at %s and run this again to verify it against %s' % (target, SUM_FILE)
    else:
        manual = ('place it at %s (it cannot be verified: no checksum for it in %s yet)'
                  % (target, SUM_FILE))
    return ('cannot reach %s%s: %s. If you have the file from elsewhere, %s; or fetch it from '
            'a mirror with --url URL' % (parts.netloc, note, reason, manual))


def _reason(err):
    if isinstance(err, urllib.error.URLError):
        err = err.reason
    if isinstance(err, (socket.timeout, TimeoutError)):
        return 'timed out'
    return str(err) or type(err).__name__


def download(folder, url=None, force=False, timeout=30.0, stream=None):
    """Fetch, check and install the weights of a model folder.

    Parameters
    ----------
    folder : str
        Holds ``caffemodel-url``; the weights land beside it.
    url : str, optional
        A mirror to fetch from instead; the file keeps the name from ``caffemodel-url``.
    force : bool
        Fetch even when the file is present (it is replaced only by a good download).
    timeout : float
        Seconds allowed for connecting and for each read.
    stream : file or False, optional
        Where everything goes; by default the progress bar and notes go to stderr
        and the outcome to stdout. False: nothing is printed.

    Returns
    -------
    str
        The path of the weights.

    Raises
    ------
    DownloadError
        With a one-line message saying what failed and what to do.
    """
    out = sys.stdout if stream is None else stream
    published = read_url(folder)
    url = url or published
    target = target_path(folder, published)
    name = os.path.basename(target)
    sums_path = os.path.join(folder, SUM_FILE)
    record = read_checksums(sums_path).get(name)

    if os.path.exists(target) and not force:
        if record is None:
            _say(out, '%s is already there (%d bytes; not verified: no checksum in %s); '
                 '--force fetches it again' % (target, os.path.getsize(target), sums_path))
            return target
        problem = _verify(target, record, stream)
        if problem is None:
            _say(out, '%s is already there and matches %s' % (target, sums_path))
            return target
        _say(out, '%s does not match %s (%s); fetching it again' % (target, sums_path, problem))

    part = target + '.part'
    try:
        size = fetch(url, part, timeout, record[1] if record else None, stream)
    except Unreachable as err:
        raise DownloadError(unreachable_message(url, err.reason, target,
                                                record is not None)) from None
    except Interrupted as err:
        raise DownloadError('%s; run the same command again to resume from %s'
                            % (err, part)) from None
    except OSError as err:
        raise DownloadError('cannot write %s: %s' % (part, err)) from None

    if record is not None:
        problem = _verify(part, record, stream)
        if problem is not None:
            os.remove(part)
            raise DownloadError('%s from %s has %s; removed it, %s is unchanged. If the '
                                'published weights changed on purpose, delete the entry in %s'
                                % (name, url, problem, target, sums_path))
    else:
        digest = sha256_file(part, stream)
    os.replace(part, target)
    with contextlib.suppress(OSError):
        _fsync_dir(folder)
    if record is None:
        write_checksum(sums_path, name, digest, size)
        _say(out, 'recorded SHA-256 %s and size %d of %s in %s; later downloads are verified '
             'against it' % (digest, size, name, sums_path))
        _say(out, 'downloaded %s (%d bytes)' % (target, size))
    else:
        _say(out, 'downloaded %s (%d bytes, matches %s)' % (target, size, sums_path))
    return target


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _say(stream, line):
    if stream:
        stream.write(line + '\n')
        stream.flush()


# ------------------------------------------------------------------------ command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('folders', nargs='+', metavar='FOLDER',
                        help='model folder with a caffemodel-url, e.g. voc-fcn8s')
    parser.add_argument('--url', help='fetch from this mirror instead of caffemodel-url '
                                      '(the file keeps its published name)')
    parser.add_argument('--force', action='store_true',
                        help='fetch even when the weights are already there')
    parser.add_argument('--timeout', type=float, default=30.0,
                        help='seconds allowed to connect and for each read (default 30)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.url and len(args.folders) > 1:
        raise SystemExit('download.py: error: --url needs a single folder')
    for folder in args.folders:
        try:
            download(folder, args.url, args.force, args.timeout)
        except (DownloadError, OSError) as err:
            raise SystemExit('download.py: error: %s' % err) from None
        except KeyboardInterrupt:
            raise SystemExit('download.py: interrupted; run the same command again to resume '
                             'from the .part file') from None
    return 0


if __name__ == '__main__':
    sys.exit(main())
