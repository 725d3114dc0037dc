"""The shared HTTP client: retries with backoff and Retry-After, the rate limiter, TLS with HTTP/2."""

import concurrent.futures
import email.utils
import hashlib
import os
import threading
import time

import pytest

from occystrap import tuning
from occystrap.registry.client import RegistryClient
from occystrap.registry.http import ConnectionFailed, HttpClient, RetryPolicy, parse_retry_after
from occystrap.registry.ratelimit import TokenBucket
from occystrap.settings import Settings
from occystrap.tuning import READ_SIZE, use_lean_body_reads
from tests.helpers import ScriptedServer


def test_retry_after_accepts_seconds_and_http_dates():
    now = time.time()
    assert parse_retry_after('7') == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after('soon') is None
    assert parse_retry_after(None) is None


def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(5, base=0.5, cap=4.0, rand=lambda: 1.0)
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert RetryPolicy(5, base=0.5, rand=lambda: 0.25).delay(2) == 0.5
    assert policy.delay(0, retry_after='3') == 3.0
    assert policy.retryable_status(429) and policy.retryable_status(503)
    assert not policy.retryable_status(404) and not policy.retryable_status(501)


def test_token_bucket_spaces_requests_at_the_rate():
    clock = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds

    bucket = TokenBucket(4, burst=1, clock=lambda: clock[0], sleep=sleep)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[0] == 0
    assert waits[1:] == pytest.approx([0.25] * 4)
    assert clock[0] == pytest.approx(1.0)


def test_token_bucket_is_shared_between_threads():
    bucket = TokenBucket(50, burst=1)
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: [bucket.acquire() for _ in range(5)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 20 acquisitions at 50/s with a burst of one take at least 19 intervals of 20 ms.
    assert time.monotonic() - started >= 0.37


def _client(retries=3, **kwargs):
    http = HttpClient(Settings(retries=retries, insecure=True, **kwargs))
    http.retry._sleep = lambda seconds: http.slept.append(seconds)
    http.slept = []
    return http


def test_5xx_answers_are_retried_until_success():
    with ScriptedServer([(503, {}, b''), (502, {}, b''), (200, {}, b'ok')]) as server:
        http = _client(retries=3)
        response = http.request('GET', 'http://%s/v2/' % server.host)
        assert response.status_code == 200 and response.content == b'ok'
        assert len(server.seen) == 3 and http.retried == 2 and len(http.slept) == 2
        http.close()


def test_retries_stop_at_the_limit_and_return_the_last_answer():
    with ScriptedServer([(503, {}, b'')] * 5) as server:
        http = _client(retries=1)
        assert http.request('GET', 'http://%s/v2/' % server.host).status_code == 503
        assert len(server.seen) == 2
        http.close()


def test_429_waits_as_retry_after_says():
    with ScriptedServer([(429, {'Retry-After': '2'}, b''), (200, {}, b'')]) as server:
        http = _client()
        assert http.request('GET', 'http://%s/v2/' % server.host).status_code == 200
        assert http.slept == [2.0]
        http.close()


def test_no_retry_when_asked_not_to():
    with ScriptedServer([(500, {}, b''), (200, {}, b'')]) as server:
        http = _client()
        assert http.request('PUT', 'http://%s/x' % server.host, content=b'data', retry=False).status_code == 500
        assert len(server.seen) == 1
        http.close()


def test_unreachable_server_fails_after_retries_with_a_one_line_error():
    # A server that answered once and is gone; one that never answered fails at once (test_connection_refused.py).
    with ScriptedServer([(200, {'Connection': 'close'}, b'')]) as server:
        http = _client(retries=2)
        assert http.request('GET', 'http://%s/v2/' % server.host).status_code == 200
    with pytest.raises(ConnectionFailed) as raised:
        http.request('GET', 'http://%s/v2/' % server.host)
    assert str(raised.value).startswith('cannot reach %s: ' % server.host)
    assert '(after 2 retries)' in str(raised.value) and len(http.slept) == 2
    http.close()


def test_rate_limit_caps_requests_of_the_run(registry):
    http = HttpClient(Settings(insecure=True, rate_limit=20))
    client = RegistryClient(http, registry.host)
    started = time.monotonic()
    for _ in range(41):
        client.ping()
    elapsed = time.monotonic() - started
    # A burst of 20 goes at once; the other 21 requests are spaced 50 ms apart, however fast the registry is.
    assert elapsed >= 1.0
    assert http.requests <= 20 + 20 * elapsed + 1
    http.close()


def test_blob_downloads_read_more_than_64k_per_socket_read(registry):
    # httpcore reads 64 KiB per recv unless told otherwise; every read costs a trip through h11 and our readers.
    tuning.apply()   # as the command line does for every command
    http = HttpClient(Settings(insecure=True))
    client = RegistryClient(http, registry.host)
    blob = os.urandom(6 * 1024 * 1024)
    digest = 'sha256:' + hashlib.sha256(blob).hexdigest()
    client.upload_blob('reads/large', digest, blob, len(blob))
    reader = client.open_blob('reads/large', digest, len(blob))
    time.sleep(0.3)   # let the socket buffer fill, so one read can find more than 64 KiB waiting
    sizes = []
    while True:
        chunk = reader.read(READ_SIZE)
        if not chunk:
            break
        sizes.append(len(chunk))
    reader.close()
    http.close()
    assert sum(sizes) == len(blob)
    assert max(sizes) > 64 * 1024, sizes


def _h11_bodies(pieces, responses):
    """Drive an h11 client connection through `responses` responses fed as `pieces`; return their bodies."""
    import h11
    connection = h11.Connection(h11.CLIENT)
    pieces = list(pieces)
    bodies = []
    for _ in range(responses):
        connection.send(h11.Request(method='GET', target='/', headers=[('Host', 'x')]))
        connection.send(h11.EndOfMessage())
        data = b''
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(pieces.pop(0) if pieces else b'')
            elif isinstance(event, h11.Response):
                assert event.status_code == 200 and event.headers
            elif isinstance(event, h11.Data):
                data += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        bodies.append(data)
        connection.start_next_cycle()
    return bodies


def test_lean_body_reads_apply_to_this_h11_and_parse_the_same():
    # If this fails after an h11 upgrade, its ReceiveBuffer changed: check tuning.use_lean_body_reads against it.
    from h11._receivebuffer import ReceiveBuffer
    assert use_lean_body_reads()
    assert ReceiveBuffer._occystrap_lean

    buffer = ReceiveBuffer()
    assert buffer.maybe_extract_at_most(10) is None
    received = os.urandom(1000)
    buffer += received
    assert buffer.maybe_extract_at_most(0) is None
    assert buffer.maybe_extract_at_most(5000) is received   # handed over as it came, not copied
    buffer += b'abcdef'
    buffer += b'gh'
    assert bytes(buffer.maybe_extract_at_most(2)) == b'ab'
    taken = buffer.maybe_extract_at_most(100)
    assert bytes(taken) == b'cdefgh' and len(buffer) == 0
    buffer += b'ij'   # the buffer handed out is not the one that fills next
    assert bytes(taken) == b'cdefgh' and bytes(buffer) == b'ij'
    buffer += b'\r\nrest'
    line = buffer.maybe_extract_next_line()
    assert isinstance(line, bytearray) and line == b'ij\r\n' and bytes(buffer) == b'rest'

    # Two responses on one connection, a Content-Length body and a chunked one, fed in pieces that split heads
    # and bodies anywhere, and in pieces that end exactly where each part does (a head alone, then the body).
    body = os.urandom(300000)
    head1 = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n' % len(body)
    head2 = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'
    chunked = b''.join(b'%x\r\n%s\r\n' % (len(part), part) for part in (body[:70000], body[70000:])) + b'0\r\n\r\n'
    wire = head1 + body + head2 + chunked
    assert _h11_bodies([wire[i:i + 65536] for i in range(0, len(wire), 65536)], 2) == [body, body]
    assert _h11_bodies([head1, body[:100000], body[100000:], head2, chunked], 2) == [body, body]


@pytest.mark.integration
def test_tls_registry_negotiates_http2(tls_registry):
    http = HttpClient(Settings(ca_cert=str(tls_registry.ca_path), http2=True))
    client = RegistryClient(http, tls_registry.host)
    assert client.ping()
    assert http.http_version(tls_registry.host) == 'HTTP/2'
    assert http.last_http_version == 'HTTP/2'
    assert tls_registry.access_log()[-1].protocol == 'HTTP/2.0'
    http.close()


@pytest.mark.integration
def test_blob_transfers_use_http1_while_metadata_uses_http2(tls_registry):
    # Concurrent request bodies on one HTTP/2 connection stall in httpcore's flow control, and one connection for
    # every blob caps throughput where each connection is limited: blobs take HTTP/1.1 connections.
    http = HttpClient(Settings(ca_cert=str(tls_registry.ca_path), http2=True))
    client = RegistryClient(http, tls_registry.host)
    blobs = [os.urandom(300_000) for _ in range(4)]
    digests = ['sha256:' + hashlib.sha256(b).hexdigest() for b in blobs]
    before = len(tls_registry.access_log())
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda pair: client.upload_blob('h2/uploads', pair[0], pair[1], len(pair[1])),
                      zip(digests, blobs)))
    assert [client.blob_exists('h2/uploads', d) for d in digests] == [len(b) for b in blobs]
    assert client.get_blob_bytes('h2/uploads', digests[0]) == blobs[0]
    assert client.ping()
    http.close()
    # The registry logs a request once its handler has returned, which can be after our client has its answer.
    deadline = time.monotonic() + 10
    while True:
        served = tls_registry.access_log()[before:]
        if any(e.method == 'GET' and '/blobs/' in e.path for e in served) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    blob_requests = [e for e in served if '/blobs/' in e.path and e.method in ('GET', 'PUT', 'PATCH')]
    metadata = [e for e in served if e.path == '/v2/']
    assert len([e for e in blob_requests if e.method in ('PUT', 'PATCH')]) >= 4
    assert [e for e in blob_requests if e.method == 'GET']
    assert {e.protocol for e in blob_requests} == {'HTTP/1.1'}
    assert metadata and {e.protocol for e in metadata} == {'HTTP/2.0'}


@pytest.mark.integration
def test_no_http2_keeps_http1(tls_registry):
    http = HttpClient(Settings(ca_cert=str(tls_registry.ca_path), http2=False))
    assert RegistryClient(http, tls_registry.host).ping()
    assert http.http_version(tls_registry.host) == 'HTTP/1.1'
    http.close()


@pytest.mark.integration
def test_untrusted_certificate_is_reported_without_retries(tls_registry):
    http = HttpClient(Settings(retries=3))
    with pytest.raises(ConnectionFailed) as raised:
        RegistryClient(http, tls_registry.host).ping()
    assert 'TLS certificate not trusted' in str(raised.value) and '--ca-cert' in str(raised.value)
    assert http.retried == 0
    http.close()


@pytest.mark.integration
def test_https_to_a_plain_registry_suggests_insecure(registry):
    http = HttpClient(Settings(retries=0))
    with pytest.raises(ConnectionFailed) as raised:
        RegistryClient(http, registry.host).ping()
    assert '--insecure' in str(raised.value)
    http.close()


@pytest.mark.integration
def test_callers_choose_the_transfer_connections_not_the_url(tls_registry):
    # The transport routes by what the caller says, whatever the path looks like.
    http = HttpClient(Settings(ca_cert=str(tls_registry.ca_path), http2=True))
    before = len(tls_registry.access_log())
    http.request('GET', 'https://%s/v2/' % tls_registry.host, transfer=True).close()
    blob_path = '/v2/transfer/choice/blobs/sha256:' + '0' * 64
    http.request('HEAD', 'https://%s%s' % (tls_registry.host, blob_path), stream=True).close()
    http.close()
    served = tls_registry.access_log()[before:]
    assert [(e.path, e.protocol) for e in served] == [('/v2/', 'HTTP/1.1'), (blob_path, 'HTTP/2.0')]


def test_registry_clients_of_a_run_share_one_authenticator_per_host_and_credentials():
    from occystrap.pipeline import RunContext
    ctx = RunContext(Settings(insecure=True))
    first = RegistryClient(ctx.http, '127.0.0.1:5000', username='u', password='p', authenticators=ctx.authenticators)
    second = RegistryClient(ctx.http, '127.0.0.1:5000', username='u', password='p', authenticators=ctx.authenticators)
    other = RegistryClient(ctx.http, '127.0.0.1:5000', username='v', password='p', authenticators=ctx.authenticators)
    alone = RegistryClient(ctx.http, '127.0.0.1:5000', username='u', password='p')
    assert first.auth is second.auth
    assert other.auth is not first.auth and alone.auth is not first.auth
    assert not hasattr(ctx.http, 'authenticator')
    ctx.close()
