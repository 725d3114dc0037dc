"""Tests for tools/delayproxy.py: the delay proxy over loopback and the fault proxy before a real registry."""

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.services import Registry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import delayproxy, imagegen  # noqa: E402


# ---------------------------------------------------------------------------------------------------------
# Small loopback servers
# ---------------------------------------------------------------------------------------------------------

class _TcpServer:
    """A threaded loopback TCP server running handler(conn) per connection."""

    def __init__(self, handler):
        self.sock = socket.create_server(('127.0.0.1', 0))
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        with conn:
            try:
                self.handler(conn)
            except OSError:
                pass

    def close(self):
        self.sock.close()


def _echo(conn):
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def _recv_exactly(sock, n):
    parts, got = [], 0
    while got < n:
        data = sock.recv(min(65536, n - got))
        assert data, f'connection closed after {got} of {n} bytes'
        parts.append(data)
        got += len(data)
    return b''.join(parts)


@pytest.fixture
def echo_server():
    server = _TcpServer(_echo)
    yield server
    server.close()


@pytest.fixture
def proxy_factory():
    stops = []

    def start(target, **kwargs):
        host, port, stop = delayproxy.start_proxy_thread(target, **kwargs)
        stops.append(stop)
        return host, port

    yield start
    for stop in stops:
        stop()


# ---------------------------------------------------------------------------------------------------------
# Delay proxy
# ---------------------------------------------------------------------------------------------------------

def test_round_trip_includes_the_added_latency(echo_server, proxy_factory):
    host, port = proxy_factory(('127.0.0.1', echo_server.port), latency_ms=100)
    with socket.create_connection((host, port)) as sock:
        timings = []
        for _ in range(3):
            start = time.monotonic()
            sock.sendall(b'x')
            assert _recv_exactly(sock, 1) == b'x'
            timings.append(time.monotonic() - start)

    assert all(0.1 <= t < 0.3 for t in timings), timings


def test_bandwidth_cap_paces_one_megabyte_to_about_a_second(proxy_factory):
    payload = os.urandom(1000 * 1000)

    def send_payload(conn):
        conn.recv(1)
        conn.sendall(payload)

    server = _TcpServer(send_payload)
    try:
        host, port = proxy_factory(f'127.0.0.1:{server.port}', bandwidth_mbit=8)
        with socket.create_connection((host, port)) as sock:
            start = time.monotonic()
            sock.sendall(b'g')
            received = _recv_exactly(sock, len(payload))
            elapsed = time.monotonic() - start
    finally:
        server.close()

    assert received == payload
    assert 0.85 <= elapsed < 1.6, elapsed


def test_five_megabytes_pass_intact_and_in_order(echo_server, proxy_factory):
    payload = os.urandom(5 * 1024 * 1024)
    host, port = proxy_factory(('127.0.0.1', echo_server.port), latency_ms=20)
    with socket.create_connection((host, port)) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = _recv_exactly(sock, len(payload))
        sender.join()

    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_window_bounds_bytes_in_flight(proxy_factory):
    # 256 KiB through a 32 KiB window that reopens one 100 ms round trip after delivery needs ~8 round trips.
    payload = os.urandom(256 * 1024)
    received = []

    def sink(conn):
        received.append(_recv_exactly(conn, len(payload)))
        conn.sendall(b'k')

    server = _TcpServer(sink)
    try:
        host, port = proxy_factory(('127.0.0.1', server.port), latency_ms=100, window=32 * 1024)
        with socket.create_connection((host, port)) as sock:
            start = time.monotonic()
            sock.sendall(payload)
            assert _recv_exactly(sock, 1) == b'k'
            elapsed = time.monotonic() - start
    finally:
        server.close()

    assert received == [payload]
    assert elapsed >= 0.6, elapsed


def test_cli_prints_address_and_exits_cleanly_on_sigterm(echo_server):
    process = subprocess.Popen([sys.executable, str(ROOT / 'tools' / 'delayproxy.py'), '--target',
                                f'127.0.0.1:{echo_server.port}', '--latency', '10'],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().strip()
        assert line.startswith('listening 127.0.0.1:'), line
        port = int(line.rsplit(':', 1)[1])
        with socket.create_connection(('127.0.0.1', port)) as sock:
            sock.sendall(b'ping')
            assert _recv_exactly(sock, 4) == b'ping'
            process.send_signal(signal.SIGTERM)
            assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr.read() == ''


# ---------------------------------------------------------------------------------------------------------
# Fault proxy, in front of a real registry
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def client():
    """One HTTP client for the module; a new client per request is slow to set up."""
    with httpx.Client(timeout=10) as http:
        yield http


@pytest.fixture(scope='module')
def registry(tmp_path_factory):
    """A real docker-registry of this module's own (tests/services.Registry); yields its URL."""
    with Registry(tmp_path_factory.mktemp('registry')) as reg:
        yield reg.url


@pytest.fixture(scope='module')
def seeded(registry, tmp_path_factory):
    """Push a tiny generated base image to the registry with skopeo; return (name, layer digest, blob)."""
    layout = tmp_path_factory.mktemp('layout') / 'base'
    [info] = imagegen.generate('base', str(layout), scale=0.01)
    _skopeo_copy(f'oci:{layout}:latest', f'docker://{registry[7:]}/faults/base:latest')
    layer = info.layers[0]
    with open(layer.path, 'rb') as f:
        return 'faults/base', layer.digest, f.read()


def _skopeo_copy(src, dest):
    result = subprocess.run(['skopeo', 'copy', '--quiet', '--dest-tls-verify=false', src, dest],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f'skopeo copy {src} {dest} failed: {result.stderr}'


@pytest.fixture
def fault_proxy(registry):
    proxies = []

    def start(rules):
        proxy = delayproxy.FaultProxy(registry, rules=rules).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


def test_drop_cuts_a_blob_body_then_passes_the_next_request(seeded, fault_proxy, client):
    name, digest, blob = seeded
    proxy = fault_proxy([delayproxy.drop_after(r'/blobs/sha256:', 1000)])
    url = f'{proxy.url}/v2/{name}/blobs/{digest}'

    with pytest.raises(httpx.RemoteProtocolError):
        client.get(url)
    retry = client.get(url)

    assert proxy.hits == {'drop:/blobs/sha256:': 1}
    assert retry.status_code == 200 and retry.content == blob


def test_range_requests_pass_through(seeded, fault_proxy, client):
    name, digest, blob = seeded
    proxy = fault_proxy([])

    response = client.get(f'{proxy.url}/v2/{name}/blobs/{digest}', headers={'Range': 'bytes=100-1123'})

    assert response.status_code == 206
    assert response.content == blob[100:1124]
    assert response.headers['Content-Range'] == f'bytes 100-1123/{len(blob)}'


@pytest.mark.parametrize('status', [429, 503])
def test_status_fault_answers_first_requests_with_retry_after(seeded, fault_proxy, status, client):
    name, _, _ = seeded
    proxy = fault_proxy([delayproxy.respond_status(r'/manifests/', status=status, count=2)])
    url = f'{proxy.url}/v2/{name}/manifests/latest'
    headers = {'Accept': imagegen.OCI_MANIFEST}

    responses = [client.get(url, headers=headers) for _ in range(3)]

    assert [r.status_code for r in responses] == [status, status, 200]
    assert responses[0].headers['Retry-After'] == '1'
    assert responses[0].json()['errors'][0]['code'] in ('TOOMANYREQUESTS', 'UNAVAILABLE')
    assert json.loads(responses[2].content)['schemaVersion'] == 2
    assert proxy.hits['status:/manifests/'] == 2


def test_corrupt_flips_one_byte_and_keeps_the_length(seeded, fault_proxy, client):
    name, digest, blob = seeded
    proxy = fault_proxy([delayproxy.corrupt(r'/blobs/sha256:')])

    response = client.get(f'{proxy.url}/v2/{name}/blobs/{digest}')

    assert int(response.headers['Content-Length']) == len(response.content) == len(blob)
    assert sum(a != b for a, b in zip(response.content, blob)) == 1
    assert 'sha256:' + hashlib.sha256(response.content).hexdigest() != digest
    assert client.get(f'{proxy.url}/v2/{name}/blobs/{digest}').content == blob


def test_uploads_through_the_proxy_get_locations_pointing_at_it(registry, seeded, fault_proxy, tmp_path, client):
    proxy = fault_proxy([delayproxy.respond_status(r'/blobs/uploads/', status=503, count=1, methods=('POST',))])

    refused = client.post(f'{proxy.url}/v2/faults/pushed/blobs/uploads/')
    started = client.post(f'{proxy.url}/v2/faults/pushed/blobs/uploads/')
    assert refused.status_code == 503
    assert started.status_code == 202
    assert started.headers['Location'].startswith(proxy.url + '/v2/faults/pushed/blobs/uploads/')

    # A whole push through the proxy: chunked PATCH/PUT uploads, HEAD checks, manifest PUT.
    layout = tmp_path / 'small'
    imagegen.generate('base', str(layout), seed=3, scale=0.005)
    _skopeo_copy(f'oci:{layout}:latest', f'docker://{proxy.url[7:]}/faults/pushed:v1')
    manifest = client.get(f'{registry}/v2/faults/pushed/manifests/v1', headers={'Accept': imagegen.OCI_MANIFEST})
    assert manifest.status_code == 200
    assert any(method == 'PUT' and '/manifests/v1' in path for method, path, _, _ in proxy.requests)


# ---------------------------------------------------------------------------------------------------------
# Fault proxy as a hostile server: its own answers, huge bodies, raw bytes, a TLS front
# ---------------------------------------------------------------------------------------------------------

def test_answer_fills_in_its_own_address_and_the_path(seeded, fault_proxy, client):
    name, digest, _ = seeded
    proxy = fault_proxy([delayproxy.redirect(r'/blobs/', 'http://{netloc}{path}?port={port}', scheme='http')])

    response = client.get(f'{proxy.url}/v2/{name}/blobs/{digest}')

    assert response.status_code == 307
    assert response.headers['Location'] == (f'http://{proxy.netloc}/v2/{name}/blobs/{digest}'
                                            f'?port={proxy.netloc.rsplit(":", 1)[1]}')
    assert proxy.received[-1].scheme == 'http' and proxy.received[-1].path == f'/v2/{name}/blobs/{digest}'
    assert proxy.requests[-1] == ('GET', f'/v2/{name}/blobs/{digest}', 307, 'answer')


@pytest.mark.parametrize('framing', ['length', 'chunked', 'close'])
def test_huge_body_is_generated_as_sent_in_each_framing(fault_proxy, framing):
    size = 3 * 1024 * 1024 + 5
    proxy = fault_proxy([delayproxy.huge(r'/big', size, framing=framing, fill=b'ab')])

    with httpx.Client(timeout=10) as http, http.stream('GET', f'{proxy.url}/big') as response:
        digest = hashlib.sha256()
        for chunk in response.iter_raw():
            digest.update(chunk)
        headers = response.headers

    expected = (b'ab' * (size // 2 + 1))[:size]
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert headers.get('Content-Length') == (str(size) if framing == 'length' else None)
    assert (headers.get('Transfer-Encoding') == 'chunked') == (framing == 'chunked')


def test_huge_gzip_body_inflates_to_its_size(fault_proxy):
    size = 64 * 1024 * 1024
    proxy = fault_proxy([delayproxy.huge(r'/bomb', size, encoding='gzip', fill=b'\0')])

    with httpx.Client(timeout=10) as http:
        response = http.get(f'{proxy.url}/bomb')

    assert response.headers['Content-Encoding'] == 'gzip'
    assert int(response.headers['Content-Length']) < size // 500
    assert len(response.content) == size and response.content.count(0) == size


def test_raw_writes_bytes_that_are_not_http(fault_proxy):
    proxy = fault_proxy([delayproxy.raw(r'/garbage', b'\x15\x03\x03\x00\x02\x02\x46')])
    with socket.create_connection(('127.0.0.1', int(proxy.netloc.rsplit(':', 1)[1]))) as sock:
        sock.sendall(b'GET /garbage HTTP/1.1\r\nHost: x\r\n\r\n')
        received = b''
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    assert received == b'\x15\x03\x03\x00\x02\x02\x46'


@pytest.fixture(scope='module')
def tls_material(tmp_path_factory):
    from tests.services import write_tls_material
    return write_tls_material(tmp_path_factory.mktemp('proxy-tls'))


def test_tls_front_serves_https_and_sees_plain_http_on_the_same_port(registry, seeded, tls_material):
    name, digest, blob = seeded
    with delayproxy.FaultProxy(registry, tls=(tls_material['cert'], tls_material['key'])) as proxy:
        assert proxy.url.startswith('https://127.0.0.1:')
        with httpx.Client(verify=ssl.create_default_context(cafile=tls_material['ca']), timeout=10) as https:
            assert https.get(f'{proxy.url}/v2/{name}/blobs/{digest}').content == blob
        with httpx.Client(timeout=10) as plain:
            plain_answer = plain.get(f'http://{proxy.netloc}/v2/{name}/blobs/{digest}',
                                     headers={'Authorization': 'Basic c2VjcmV0'})
    assert plain_answer.content == blob
    assert [(r.scheme, r.headers.get('Authorization')) for r in proxy.received] == [
        ('https', None), ('http', 'Basic c2VjcmV0')]


def test_tls_front_before_a_tls_registry(tmp_path, tls_material):
    with Registry(tmp_path / 'tls-registry', tls=True) as upstream, \
            delayproxy.FaultProxy(upstream.url, tls=(tls_material['cert'], tls_material['key']),
                                  upstream_ca=upstream.ca_path) as proxy, \
            httpx.Client(verify=ssl.create_default_context(cafile=tls_material['ca']), timeout=10) as https:
        assert https.get(f'{proxy.url}/v2/').status_code == 200
    assert [r.scheme for r in proxy.received] == ['https']


@pytest.mark.parametrize('plain, expected', [
    ('go', b'HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n'),
    ('alert', b'\x15\x03\x03\x00\x02\x02\x46')])
def test_tls_front_answers_plain_http_as_tls_servers_do(registry, tls_material, plain, expected):
    with delayproxy.FaultProxy(registry, tls=(tls_material['cert'], tls_material['key']), plain=plain) as proxy:
        with socket.create_connection(('127.0.0.1', int(proxy.netloc.rsplit(':', 1)[1]))) as sock:
            sock.sendall(b'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n')
            received = b''
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
    assert received == expected
    assert proxy.received == []
