"""The run's one HTTP client: pooled (HTTP/2 where offered) connections, one retry policy, one rate limiter.

RunContext.http creates a single HttpClient per run; every thread and image shares it, so connections, tokens and
the rate limit are shared too. Redirects are not followed here: the registry client follows them itself so that
Authorization is dropped when a redirect leads to another host.
"""

import email.utils
import logging
import random
import ssl
import threading
import time
import urllib.parse

import httpx

from occystrap import __version__
from occystrap.errors import OccystrapError, RegistryError
from occystrap.registry.ratelimit import TokenBucket

LOG = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(connect=30.0, read=120.0, write=120.0, pool=600.0)
MAX_RETRY_AFTER = 300.0
# Bytes asked of the socket per read of an HTTP/1.1 response. httpcore's default is 64 KiB; every read then costs a
# pass through h11, our stream wrappers and a GIL hand-off for each hash, inflate and write. 256 KiB reads took the
# 24-layer 190 MB pull from 2.5 to 1.7 s on 2 cores; 1 MiB reads were no faster and doubled peak memory (each read
# allocates its full size first), see docs/performance.md, "Where the time goes".
READ_SIZE = 256 * 1024
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class ConnectionFailed(RegistryError):
    """A server could not be reached or the connection broke, even after retries."""


def parse_retry_after(value, now=None):
    """Seconds to wait as a Retry-After header says (delta seconds or an HTTP date), or None when unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class RetryPolicy:
    """When and how long to wait before retrying: exponential backoff with full jitter, Retry-After honoured.

    Connection errors, 429 and 5xx answers are retried up to `retries` times.
    """

    def __init__(self, retries, base=0.25, cap=20.0, rand=random.random, sleep=time.sleep):
        self.retries = max(0, int(retries))
        self.base = base
        self.cap = cap
        self._rand = rand
        self._sleep = sleep

    @staticmethod
    def retryable_status(status):
        return status == 429 or (500 <= status < 600 and status not in (501, 505))

    def delay(self, attempt, retry_after=None):
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        advised = parse_retry_after(retry_after)
        if advised is not None:
            return min(advised, MAX_RETRY_AFTER)
        return self._rand() * min(self.cap, self.base * (2 ** attempt))

    def wait(self, attempt, retry_after=None):
        seconds = self.delay(attempt, retry_after)
        if seconds > 0:
            self._sleep(seconds)
        return seconds


def ssl_context(ca_cert=None):
    """Verification against certifi's bundle, the system store, and an extra CA bundle when given."""
    import certifi
    context = ssl.create_default_context(cafile=certifi.where())
    context.load_default_certs()
    if ca_cert:
        try:
            context.load_verify_locations(cafile=ca_cert)
        except (OSError, ssl.SSLError) as e:
            raise OccystrapError('cannot use CA bundle %s: %s' % (ca_cert, e))
    return context


def host_of(url):
    """host[:port] of a URL, never its userinfo (this text reaches errors and logs)."""
    return urllib.parse.urlsplit(str(url)).netloc.rpartition('@')[2]


def without_query(url):
    """A URL safe to log: upload state and signed redirect parameters stay out of logs."""
    parts = urllib.parse.urlsplit(str(url))
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, '', ''))


def describe_transport_error(error):
    """A one-line reason for a transport failure, with a hint for the usual TLS mistakes."""
    text = ' '.join(str(error).split()) or type(error).__name__
    if 'CERTIFICATE_VERIFY_FAILED' in text:
        return 'TLS certificate not trusted (%s); pass --ca-cert with the CA that signed it' % text
    if 'WRONG_VERSION_NUMBER' in text or 'record layer failure' in text:
        return 'TLS handshake failed (%s); is it a plain HTTP registry? then use --insecure' % text
    return '%s: %s' % (type(error).__name__, text)


def _permanent(error):
    # A certificate problem will not fix itself by retrying.
    text = str(error)
    return 'CERTIFICATE_VERIFY_FAILED' in text or 'WRONG_VERSION_NUMBER' in text


class LazyTransport(httpx.BaseTransport):
    """A transport built on first use, so its cost is paid only by runs that need it."""

    def __init__(self, factory):
        self._factory = factory
        self._transport = None
        self._lock = threading.Lock()

    def handle_request(self, request):
        if self._transport is None:
            with self._lock:
                if self._transport is None:
                    self._transport = self._factory()
        return self._transport.handle_request(request)

    def close(self):
        if self._transport is not None:
            self._transport.close()


def use_large_reads(size=READ_SIZE):
    """Make httpcore's HTTP/1.1 connections read `size` bytes per recv (a class attribute it reads per call)."""
    import httpcore
    connection = getattr(httpcore, 'HTTP11Connection', None)
    if connection is not None and getattr(connection, 'READ_NUM_BYTES', size) < size:
        connection.READ_NUM_BYTES = size


def _receive(self, data):
    """h11 ReceiveBuffer.__iadd__ that adopts a received bytes object as the buffer when the buffer is empty."""
    if not self._data and type(data) is bytes:
        self._data = data
    else:
        if type(self._data) is bytes:
            self._data = bytearray(self._data)
        self._data += data
    return self


def _take_all(self):
    out = self._data
    self._data = bytearray()
    self._next_line_search = 0
    self._multiple_lines_search = 0
    return out


def _extract(self, count):
    """h11 ReceiveBuffer._extract, returning a bytearray as h11 expects, without copying when it takes everything."""
    if type(self._data) is bytes:
        self._data = bytearray(self._data)
    if count >= len(self._data):
        return _take_all(self)
    out = self._data[:count]
    del self._data[:count]
    self._next_line_search = 0
    self._multiple_lines_search = 0
    return out


def _maybe_extract_at_most(self, count):
    """h11 ReceiveBuffer.maybe_extract_at_most (body bytes) handing over the buffer, as received, when it takes all."""
    if not self._data or count <= 0:
        return None
    if count >= len(self._data):
        return _take_all(self)
    return _extract(self, count)


def use_lean_body_reads():
    """Let response bodies pass through h11 without being copied.

    h11 0.16's ReceiveBuffer copies every body chunk three times: into its bytearray, out of it to test it for
    emptiness, and out again to return it; httpcore then copies the bytearray into bytes. With these methods a
    socket read that arrives in an empty buffer and is taken whole (the usual case for a streamed blob) is the same
    bytes object all the way, and httpcore's bytes() of it is free; lines (status and headers) still come out as
    the bytearrays h11 edits in place. Applied only to the buffer layout this was written against; another h11 keeps
    its own methods, and tests/test_registry_http.py fails so that this is looked at again. About 6% of the CPU of
    the 24-layer pull (docs/performance.md, "Where the time goes").
    """
    try:
        from h11._receivebuffer import ReceiveBuffer
    except ImportError:   # pragma: no cover - h11 reorganised: nothing to do
        return False
    if getattr(ReceiveBuffer, '_occystrap_lean', False):
        return True
    if set(vars(ReceiveBuffer())) != {'_data', '_next_line_search', '_multiple_lines_search'}:
        return False
    ReceiveBuffer.__iadd__ = _receive
    ReceiveBuffer._extract = _extract
    ReceiveBuffer.maybe_extract_at_most = _maybe_extract_at_most
    ReceiveBuffer._occystrap_lean = True
    return True


class HttpClient:
    """Wraps one httpx.Client for the whole run; see the module docstring."""

    def __init__(self, settings):
        use_large_reads()
        use_lean_body_reads()
        self.settings = settings
        self.retry = RetryPolicy(settings.retries)
        self.limiter = TokenBucket(settings.rate_limit) if settings.rate_limit else None
        # Enough connections for every layer transfer of every image in flight, plus token and manifest requests.
        connections = max(8, settings.parallel * settings.image_parallel + 2 * settings.image_parallel)
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._lock = threading.Lock()
        self._ssl = None
        plain = httpx.HTTPTransport(verify=False, limits=limits)
        # The TLS context costs ~0.15 s to build (certifi + system store), so a plain-HTTP run never builds it.
        tls = LazyTransport(lambda: httpx.HTTPTransport(verify=self.ssl_context(), http2=settings.http2,
                                                        limits=limits))
        self.client = httpx.Client(transport=tls, mounts={'http://': plain}, timeout=TIMEOUT,
                                   follow_redirects=False, headers={'User-Agent': 'occystrap/%s' % __version__})
        # Blob transfers (streamed blob downloads, and every request body) go over HTTP/1.1, one connection each:
        # - concurrent uploads on one HTTP/2 connection stalled in httpcore's flow-control wait until the write
        #   timeout (4 uploads through a 40 ms link), and would share the registry's ~1 MiB upload window anyway;
        # - through 40 ms and 200 Mbit/s per connection, the 24-layer pull took 8.3 s with every blob on one HTTP/2
        #   connection and 5.5 s over HTTP/1.1 connections (docs/performance.md).
        # Manifests, configs, tags, catalogs, HEAD checks and tokens stay on HTTP/2, multiplexed on one connection.
        transfer_tls = LazyTransport(lambda: httpx.HTTPTransport(verify=self.ssl_context(), http2=False,
                                                                 limits=limits))
        self.transfer_client = httpx.Client(transport=transfer_tls, mounts={'http://': plain}, timeout=TIMEOUT,
                                            follow_redirects=False,
                                            headers={'User-Agent': 'occystrap/%s' % __version__})
        self._authenticators = {}
        self.versions = {}            # host -> HTTP version of its last answer ('HTTP/2', 'HTTP/1.1')
        self.last_http_version = None
        self.requests = 0             # answers received (retries included), for tests and --verbose
        self.retried = 0

    def ssl_context(self):
        """The run's one verifying TLS context, built on first use."""
        with self._lock:
            if self._ssl is None:
                self._ssl = ssl_context(self.settings.ca_cert)
            return self._ssl

    def scheme(self, insecure=False):
        """'http' when --insecure or the URI asks for it, else 'https'."""
        return 'http' if insecure or self.settings.insecure else 'https'

    def authenticator(self, host, username=None, password=None):
        """The shared Authenticator (token cache) for a registry host and set of credentials."""
        from occystrap.registry.auth import Authenticator
        key = (host, username, password)
        with self._lock:
            if key not in self._authenticators:
                self._authenticators[key] = Authenticator(self, host, username, password)
            return self._authenticators[key]

    def http_version(self, host):
        """The HTTP version the last answer from `host` came over, or None."""
        return self.versions.get(host)

    def request(self, method, url, headers=None, content=None, stream=False, retry=True, params=None):
        """Send a request, retrying connection errors, 429 and 5xx; returns the httpx.Response.

        `content` is bytes, None, or a callable returning a fresh body (bytes or an iterator of bytes) for each
        attempt. With `stream=True` the body is left unread: the caller must close the response. Raises
        ConnectionFailed when the server stays unreachable. With `retry=False` nothing is retried.
        """
        attempt = 0
        while True:
            if self.limiter is not None:
                self.limiter.acquire()
            body = content() if callable(content) else content
            try:
                bulk = body is not None or (stream and '/blobs/' in str(url))
                client = self.transfer_client if bulk else self.client
                req = client.build_request(method, url, headers=headers, content=body, params=params)
                response = client.send(req, stream=stream)
            except httpx.TransportError as e:
                if not retry or attempt >= self.retry.retries or _permanent(e):
                    suffix = ' (after %d retries)' % attempt if attempt else ''
                    reason = describe_transport_error(e)
                    raise ConnectionFailed('cannot reach %s: %s%s' % (host_of(url), reason, suffix))
                waited = self.retry.wait(attempt)
                LOG.info('%s %s failed (%s); retry %d in %.2fs', method, without_query(url),
                         type(e).__name__, attempt + 1, waited)
                attempt += 1
                with self._lock:
                    self.retried += 1
                continue
            self._record(method, url, response, bulk)
            if retry and attempt < self.retry.retries and self.retry.retryable_status(response.status_code):
                retry_after = response.headers.get('Retry-After')
                response.close()
                waited = self.retry.wait(attempt, retry_after)
                LOG.info('%s %s answered %d; retry %d in %.2fs', method, without_query(url),
                         response.status_code, attempt + 1, waited)
                attempt += 1
                with self._lock:
                    self.retried += 1
                continue
            return response

    def _record(self, method, url, response, bulk=False):
        host = host_of(url)
        with self._lock:
            self.requests += 1
            if not bulk:   # what was negotiated for the host; blob transfers are HTTP/1.1 by choice
                self.versions[host] = response.http_version
                self.last_http_version = response.http_version
        LOG.debug('%s %s -> %d (%s)', method, without_query(url), response.status_code, response.http_version)

    def close(self):
        self.client.close()
        self.transfer_client.close()
