"""download: against a small HTTP server on 127.0.0.1, started and stopped by each test.

The server serves one generated payload; per test it honours or ignores Range
requests, cuts the body short, or answers 404, and it records every request.
"""
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import download

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOAD = np.random.RandomState(3).bytes(5 * (1 << 19) + 123)  # 2.5 MiB: several chunks
NAME = 'weights.caffemodel'


class Handler(BaseHTTPRequestHandler):
    """GET of the server's payload; HTTP/1.0, so each connection ends with its response."""
    timeout = 5  # a stuck client cannot hold a server thread for long

    def do_GET(self):
        server = self.server
        server.requests.append(self.headers.get('Range'))
        if server.status != 200:
            self.send_error(server.status)
            return
        payload, start = server.payload, 0
        match = re.match(r'bytes=(\d+)-$', self.headers.get('Range') or '')
        if match and server.honour_range:
            start = int(match.group(1))
            if start >= len(payload):
                self.send_response(416)
                self.send_header('Content-Range', 'bytes */%d' % len(payload))
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', 'bytes %d-%d/%d'
                             % (start, len(payload) - 1, len(payload)))
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if server.cut_after is not None:
            body = body[:server.cut_after]  # then the connection closes: a short body
        self.wfile.write(body)
        server.sent += len(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A threaded server on a free loopback port; shut down after the test (or 60 s)."""
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    httpd.daemon_threads = True
    httpd.payload, httpd.honour_range, httpd.cut_after, httpd.status = PAYLOAD, True, None, 200
    httpd.requests, httpd.sent = [], 0
    httpd.url = 'http://127.0.0.1:%d/%s' % (httpd.server_address[1], NAME)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05},
                              daemon=True)
    thread.start()
    watchdog = threading.Timer(60, httpd.shutdown)
    watchdog.daemon = True
    watchdog.start()
    yield httpd
    watchdog.cancel()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def model_folder(tmp_path, url):
    folder = tmp_path / 'model'
    folder.mkdir()
    (folder / 'caffemodel-url').write_text(url + '\n')
    return folder


def run(folder, *extra):
    return download.main([str(folder), '--timeout', '5', *extra])


def fails(folder, *extra):
    with pytest.raises(SystemExit) as exit_info:
        run(folder, *extra)
    message = str(exit_info.value)
    assert message.startswith('download.py: error: ') and '\n' not in message
    return message


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_full_download_lands_next_to_the_url_file_and_records_its_checksum(server, tmp_path,
                                                                           capsys):
    folder = model_folder(tmp_path, server.url)
    assert run(folder) == 0
    assert (folder / NAME).read_bytes() == PAYLOAD
    assert not (folder / (NAME + '.part')).exists()
    assert server.requests == [None] and server.sent == len(PAYLOAD)
    sums = (folder / 'caffemodel-sha256').read_text()
    assert '%s  %s\n' % (sha256(PAYLOAD), NAME) in sums  # sha256sum -c format
    assert download.read_checksums(str(folder / 'caffemodel-sha256')) == {
        NAME: (sha256(PAYLOAD), len(PAYLOAD))}
    out = capsys.readouterr().out
    assert 'recorded SHA-256 %s' % sha256(PAYLOAD) in out and 'later downloads are verified' in out


def test_resume_asks_for_the_rest_and_appends_it(server, tmp_path, capsys):
    folder = model_folder(tmp_path, server.url)
    have = 1_000_003
    (folder / (NAME + '.part')).write_bytes(PAYLOAD[:have])
    assert run(folder) == 0
    assert (folder / NAME).read_bytes() == PAYLOAD
    assert server.requests == ['bytes=%d-' % have]
    assert server.sent == len(PAYLOAD) - have
    assert 'resuming' in capsys.readouterr().err


def test_a_server_ignoring_range_makes_the_download_start_over(server, tmp_path, capsys):
    server.honour_range = False
    folder = model_folder(tmp_path, server.url)
    (folder / (NAME + '.part')).write_bytes(b'x' * 5000)  # wrong bytes: must not survive
    assert run(folder) == 0
    assert (folder / NAME).read_bytes() == PAYLOAD
    assert server.requests == ['bytes=5000-'] and server.sent == len(PAYLOAD)
    assert 'ignored the request to resume' in capsys.readouterr().err


def test_a_complete_part_file_answered_416_is_checked_and_installed(server, tmp_path):
    folder = model_folder(tmp_path, server.url)
    (folder / (NAME + '.part')).write_bytes(PAYLOAD)
    assert run(folder) == 0
    assert (folder / NAME).read_bytes() == PAYLOAD and server.sent == 0


def test_a_body_shorter_than_content_length_leaves_the_good_file_and_resumes_later(
        server, tmp_path):
    folder = model_folder(tmp_path, server.url)
    (folder / NAME).write_bytes(b'the old good file')
    server.cut_after = 700_000
    message = fails(folder, '--force')
    assert 'stopped after 700000 of %d bytes' % len(PAYLOAD) in message
    assert 'run the same command again to resume' in message
    assert (folder / NAME).read_bytes() == b'the old good file'
    assert (folder / (NAME + '.part')).read_bytes() == PAYLOAD[:700_000]
    assert not (folder / 'caffemodel-sha256').exists()  # nothing recorded from a partial file
    server.cut_after = None
    assert run(folder, '--force') == 0
    assert server.requests[-1] == 'bytes=700000-'
    assert (folder / NAME).read_bytes() == PAYLOAD
    assert download.read_checksums(str(folder / 'caffemodel-sha256')) == {
        NAME: (sha256(PAYLOAD), len(PAYLOAD))}  # recorded once the whole file is there


def test_unreachable_host_fails_in_one_line_suggesting_manual_placement(tmp_path):
    with socket.socket() as s:  # a port nobody listens on any more
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    folder = model_folder(tmp_path, 'http://127.0.0.1:%d/%s' % (port, NAME))
    message = fails(folder)
    assert 'cannot reach 127.0.0.1:%d' % port in message
    assert 'place it at %s' % (folder / NAME) in message and '--url' in message
    assert not (folder / NAME).exists() and not (folder / (NAME + '.part')).exists()


def test_unreachable_from_the_command_line_exits_nonzero_with_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    folder = model_folder(tmp_path, 'http://127.0.0.1:%d/%s' % (port, NAME))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'download.py'), str(folder),
                           '--timeout', '5'], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.count('\n') == 1 and 'cannot reach' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_unreachable_reference_host_is_said_to_have_been_down_before():
    url = 'http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel'
    message = download.unreachable_message(url, 'timed out', 'voc-fcn8s/x.caffemodel', False)
    assert "dl.caffe.berkeleyvision.org (the reference's host, which has been down at times)" \
        in message
    assert 'place it at voc-fcn8s/x.caffemodel (it cannot be verified' in message
    message = download.unreachable_message(url, 'timed out', 'voc-fcn8s/x.caffemodel', True)
    assert 'run this again to verify it against caffemodel-sha256' in message
    other = download.unreachable_message('http://127.0.0.1:9/x', 'refused', 'x', False)
    assert 'down at times' not in other


def test_recorded_checksum_verifies_the_next_download(server, tmp_path, capsys):
    folder = model_folder(tmp_path, server.url)
    run(folder)
    capsys.readouterr()
    # Present and matching: verified without asking the server.
    assert run(folder) == 0
    assert len(server.requests) == 1
    assert 'matches' in capsys.readouterr().out
    # The server now offers other bytes of the same size: refused, the good file stays.
    server.payload = PAYLOAD[::-1]
    message = fails(folder, '--force')
    assert 'SHA-256 %s' % sha256(PAYLOAD[::-1]) in message and 'is unchanged' in message
    assert (folder / NAME).read_bytes() == PAYLOAD
    assert not (folder / (NAME + '.part')).exists()


def test_recorded_size_refuses_another_file_before_downloading(server, tmp_path):
    folder = model_folder(tmp_path, server.url)
    download.write_checksum(str(folder / 'caffemodel-sha256'), NAME, sha256(b'abc'), 3)
    message = fails(folder)
    assert 'offers %d bytes but caffemodel-sha256 records 3' % len(PAYLOAD) in message
    assert not (folder / NAME).exists()
    assert not (folder / (NAME + '.part')).exists()


def test_a_file_failing_its_checksum_is_fetched_again(server, tmp_path):
    folder = model_folder(tmp_path, server.url)
    download.write_checksum(str(folder / 'caffemodel-sha256'), NAME, sha256(PAYLOAD),
                            len(PAYLOAD))
    (folder / NAME).write_bytes(b'corrupt')
    assert run(folder) == 0
    assert (folder / NAME).read_bytes() == PAYLOAD


def test_an_unverified_present_file_is_left_alone(server, tmp_path, capsys):
    folder = model_folder(tmp_path, server.url)
    (folder / NAME).write_bytes(b'placed by hand')
    assert run(folder) == 0
    assert server.requests == [] and (folder / NAME).read_bytes() == b'placed by hand'
    assert 'not verified' in capsys.readouterr().out
    assert not (folder / 'caffemodel-sha256').exists()


def test_http_error_fails_naming_the_status(server, tmp_path):
    server.status = 404
    folder = model_folder(tmp_path, server.url)
    assert 'HTTP 404' in fails(folder)


def test_a_folder_without_caffemodel_url_fails(tmp_path):
    assert 'caffemodel-url not found' in fails(tmp_path)


def test_checksum_file_is_sha256sum_compatible(tmp_path):
    path = str(tmp_path / 'caffemodel-sha256')
    download.write_checksum(path, 'a.caffemodel', sha256(b'a'), 1)
    download.write_checksum(path, 'b.caffemodel', sha256(b'bb'), 2)
    assert download.read_checksums(path) == {'a.caffemodel': (sha256(b'a'), 1),
                                             'b.caffemodel': (sha256(b'bb'), 2)}
    lines = [l for l in open(path).read().splitlines() if not l.startswith('#')]
    assert lines == ['%s  a.caffemodel' % sha256(b'a'), '%s  b.caffemodel' % sha256(b'bb')]


def test_the_repository_model_folders_name_their_weights():
    for folder, name in [('voc-fcn8s', 'fcn8s-heavy-pascal.caffemodel'),
                         ('ilsvrc-nets', 'VGG_ILSVRC_16_layers.caffemodel')]:
        url = download.read_url(os.path.join(ROOT, folder))
        assert download.target_path(folder, url) == os.path.join(folder, name)
