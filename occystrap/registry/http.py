"""The run's one HTTP client: pooled (HTTP/2 where offered) connections, one retry policy, one rate limiter.

RunContext.http creates a single HttpClient per run; every thread and image shares it, so connections and the rate
limit are shared too (tokens are the run's auth.Authenticators'). It knows HTTP, not the registry protocol: callers
say which requests are blob transfers. TLS is verified with one shared context, except for hosts that have certs.d
material (registry/certsd.py) or whose requests say tls_verify=False: those get a context and connections of their
own, built on first use (a plain-HTTP run builds none). Requests go through the environment's proxies
(registry/proxy.py). Redirects are not followed here: the registry client follows them itself so that
Authorization is dropped when a redirect leads to another origin (scheme, host and port).

Bodies read into memory are capped (`read_capped`): a request without `stream=True` answers a response whose body
was read in full, but never more than its `limit`, so a hostile server cannot make the run hold a huge answer.
"""

import email.utils
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
import zlib

import httpx

from occystrap import __version__
from occystrap.cancel import Cancellation
from occystrap.errors import OccystrapError, RegistryError
from occystrap.registry import certsd
from occystrap.registry.ratelimit import TokenBucket

LOG = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(connect=30.0, read=120.0, write=120.0, pool=600.0)
MAX_RETRY_AFTER = 300.0
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
TLS_VERIFY = 'occystrap.tls_verify'   # request extension: False asks TlsRouter for an unverified connection
# What OpenSSL says when a server refuses the handshake for want of a (good) client certificate.
CLIENT_CERT_ALERTS = ('CERTIFICATE_REQUIRED', 'BAD_CERTIFICATE', 'UNKNOWN_CA', 'certificate required')
MAX_REDIRECTS = 5                       # redirects followed for one request, wherever redirects are followed
# The most of a body held in memory. Answers read whole (stream=False) are capped at DOCUMENT_LIMIT unless the
# caller says otherwise; an error answer's body only serves for the registry's reason, so beyond ERROR_BODY_LIMIT
# it is dropped rather than read.
DOCUMENT_LIMIT = 4 * 1024 * 1024        # manifests and indexes, as the distribution spec suggests
LISTING_LIMIT = 8 * 1024 * 1024         # one page of tags, of the catalog, or of the Quay API
TOKEN_LIMIT = 64 * 1024
ERROR_BODY_LIMIT = 64 * 1024
DEFAULT_PORTS = {'http': 80, 'https': 443}


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
        _load_cas(context, ca_cert, 'CA bundle')
    return context


def _load_cas(context, path, what):
    try:
        context.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise OccystrapError('cannot use %s %s: %s' % (what, path, one_line(e)))


def host_ssl_context(host_tls, verify=True, ca_cert=None):
    """A TLS context for one registry: certs.d CAs trusted beside the usual ones, its client certificate presented;
    with `verify=False` no verification at all (skopeo's tls-verify=false), the client certificate still sent."""
    if verify:
        context = ssl_context(ca_cert)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if host_tls is not None:
        for path in host_tls.ca_files if verify else ():
            _load_cas(context, path, 'certs.d CA')
        if host_tls.client is not None:
            cert, key = host_tls.client
            try:
                context.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise OccystrapError('cannot use client certificate %s with %s: %s' % (cert, key, one_line(e)))
    return context


def one_line(error):
    return ' '.join(str(error).split()) or type(error).__name__


def host_of(url):
    """host[:port] of a URL, never its userinfo (this text reaches errors and logs)."""
    return urllib.parse.urlsplit(str(url)).netloc.rpartition('@')[2]


def origin(url):
    """(scheme, host, port) of a URL with the default port filled in: what must match for credentials to be sent."""
    parts = urllib.parse.urlsplit(str(url))
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or '').lower(), port or DEFAULT_PORTS.get(scheme)


def usable_url(url):
    """True for an absolute http(s) URL with a host, a valid port and no user information: one we may follow."""
    try:
        parts = urllib.parse.urlsplit(str(url))
        parts.port
    except ValueError:
        return False
    return (parts.scheme.lower() in ('http', 'https') and bool(parts.hostname) and '@' not in parts.netloc
            and not any(ord(c) < 33 or ord(c) == 127 for c in str(url)))


def limit_text(limit):
    """'4 MiB', '64 KiB' or '100 bytes', as a limit is shown in an error."""
    for unit, size in (('MiB', 1024 * 1024), ('KiB', 1024)):
        if limit >= size and limit % size == 0:
            return '%d %s' % (limit // size, unit)
    return '%d bytes' % limit


def _too_large(error, what, limit, size=None):
    if size is not None:
        return error('%s is %d bytes, more than the limit of %s' % (what, size, limit_text(limit)))
    return error('%s is larger than the limit of %s' % (what, limit_text(limit)))


def _inflate(data, wbits, limit, what, error):
    decompressor = zlib.decompressobj(wbits)
    out = decompressor.decompress(data, limit + 1)
    if len(out) > limit:
        raise _too_large(error, what, limit)
    return out + decompressor.flush()


def _decode(data, encodings, limit, what, error):
    """The body as sent before Content-Encoding, never more than `limit` bytes however well it was compressed."""
    for coding in reversed([c.strip().lower() for c in encodings.split(',') if c.strip()]):
        try:
            if coding == 'identity':
                continue
            if coding in ('gzip', 'x-gzip'):
                data = _inflate(data, 31, limit, what, error)
            elif coding == 'deflate':
                # Servers send either zlib-wrapped or raw deflate under this name, as httpx tolerates too.
                try:
                    data = _inflate(data, 15, limit, what, error)
                except zlib.error:
                    data = _inflate(data, -15, limit, what, error)
            elif coding == 'zstd':
                import zstandard
                reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
                parts, total = [], 0
                while total <= limit:
                    part = reader.read(limit + 1 - total)
                    if not part:
                        break
                    parts.append(part)
                    total += len(part)
                if total > limit:
                    raise _too_large(error, what, limit)
                data = b''.join(parts)
            else:
                raise error('%s has Content-Encoding %s, which occystrap cannot read' % (what, ascii(coding)[:40]))
        except (zlib.error, ValueError) as e:
            raise error('%s is not valid %s: %s' % (what, coding, ' '.join(str(e).split())[:100]))
        except Exception as e:
            if type(e).__name__ == 'ZstdError':
                raise error('%s is not valid zstd: %s' % (what, ' '.join(str(e).split())[:100]))
            raise
    return data


def read_capped(response, limit, what, error=RegistryError):
    """The body of a streamed response (decoded), or `error` naming `what` and the limit; the response is closed.

    A Content-Length over `limit` is refused before anything is read; otherwise at most `limit` bytes as received
    and `limit` bytes decoded are held, so memory stays bounded whatever the server sends. Transport failures
    while reading propagate as httpx errors (the caller decides whether to retry). HEAD answers have no body.
    """
    try:
        if response.request.method == 'HEAD':
            release(response)
            return b''
        length = response.headers.get('Content-Length', '').strip()
        if length.isdigit() and int(length) > limit:
            raise _too_large(error, what, limit, int(length))
        parts, total = [], 0
        for chunk in response.iter_raw():
            total += len(chunk)
            if total > limit:
                raise _too_large(error, what, limit)
            parts.append(chunk)
    finally:
        response.close()
    data = b''.join(parts)
    encodings = response.headers.get('Content-Encoding')
    return _decode(data, encodings, limit, what, error) if encodings else data


def release(response, limit=ERROR_BODY_LIMIT):
    """Close a response so that its connection can serve the next request.

    httpcore closes the connection of an answer closed before its end was read, and a HEAD answer or an empty
    202 has not been read to its end until its (empty) body is iterated. So a body known to be small (a HEAD
    answer, a Content-Length of at most `limit`) is read first; anything longer or of unknown length is dropped
    with its connection, as before.
    """
    try:
        length = response.headers.get('Content-Length', '').strip()
        if not response.is_closed and (response.request.method == 'HEAD' or (length.isdigit()
                                                                             and int(length) <= limit)):
            for _ in response.iter_raw():
                pass
    except (httpx.HTTPError, OSError):
        pass        # a connection that broke now is dropped by the close below, as any other
    finally:
        response.close()


def buffered(response, limit, what, error=RegistryError):
    """A streamed response read into memory (read_capped) as a closed httpx.Response with the same status,
    headers and request, so that .content, .json() and .links work as after an ordinary read.

    An error answer (status 400 and up) whose body is over ERROR_BODY_LIMIT keeps its status with an empty body.
    """
    if response.status_code >= 400 and limit > ERROR_BODY_LIMIT:
        limit = ERROR_BODY_LIMIT
    try:
        data = read_capped(response, limit, what, error)
    except error:
        if response.status_code < 400:
            raise
        data = b''
    headers = response.headers
    if headers.get('Content-Encoding'):
        headers = [(k, v) for k, v in headers.multi_items() if k.lower() not in ('content-encoding', 'content-length')]
    return httpx.Response(response.status_code, headers=headers, content=data, request=response.request,
                          extensions=response.extensions)


def unusable_redirect(what):
    """The error for a redirect to a URL that is not http(s) with a host (`what` names the thing asked for)."""
    return RegistryError('%s was redirected to an unusable URL (not http or https with a host)' % what)


def speaks_tls(netloc, timeout=5.0):
    """True when a TLS handshake with host:port succeeds (the certificate is not checked): a plain-HTTP request
    that was refused or not understood went to a TLS port."""
    parts = urllib.parse.urlsplit('//' + netloc)
    try:
        port = parts.port or 443
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection((parts.hostname, port), timeout=timeout) as sock:
            with context.wrap_socket(sock, server_hostname=parts.hostname):
                return True
    except (OSError, ValueError, TypeError):
        return False


def without_query(url):
    """A URL safe to log: upload state and signed redirect parameters stay out of logs."""
    parts = urllib.parse.urlsplit(str(url))
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, '', ''))


def describe_transport_error(error):
    """A one-line reason for a transport failure, with a hint for the usual TLS mistakes."""
    text = one_line(error)
    if 'CERTIFICATE_VERIFY_FAILED' in text:
        return ('TLS certificate not trusted (%s); pass --ca-cert, or put the CA that signed it in '
                'certs.d/HOST:PORT/ (or ?tls-verify=false on the URI to skip verification)' % text)
    if any(word in text for word in CLIENT_CERT_ALERTS):
        return ('TLS handshake refused (%s); the registry wants a client certificate: put client.cert and '
                'client.key in its certs.d/HOST:PORT/ directory' % text)
    if 'WRONG_VERSION_NUMBER' in text or 'record layer failure' in text:
        return 'TLS handshake failed (%s); is it a plain HTTP registry? then use --insecure' % text
    return '%s: %s' % (type(error).__name__, text)


def _permanent(error):
    # A certificate problem, or a proxy refusing our credentials, will not fix itself by retrying.
    text = str(error)
    return ('CERTIFICATE_VERIFY_FAILED' in text or 'WRONG_VERSION_NUMBER' in text
            or any(word in text for word in CLIENT_CERT_ALERTS)
            or (isinstance(error, httpx.ProxyError) and text.startswith('407')))


def connection_refused(error):
    """True when a transport error is a refused TCP connection (nothing listens at that address and port)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConnectionRefusedError):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


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


class TlsRouter(httpx.BaseTransport):
    """HTTPS requests to a host with TLS settings of its own (certs.d material, tls-verify=false) go through a
    transport built for them, made by `make(context)`; every other host shares `make(None)`, the run's context."""

    def __init__(self, owner, make):
        self.owner = owner
        self.make = make
        self.default = make(None)
        self._by_context = {}
        self._lock = threading.Lock()

    def handle_request(self, request):
        url = request.url
        context = self.owner.host_context(certsd.authority(url.host, url.port),
                                          request.extensions.get(TLS_VERIFY, True))
        if context is None:
            return self.default.handle_request(request)
        transport = self._by_context.get(id(context))
        if transport is None:
            with self._lock:
                transport = self._by_context.get(id(context))
                if transport is None:
                    transport = self._by_context[id(context)] = self.make(context)
        return transport.handle_request(request)

    def close(self):
        self.default.close()
        for transport in self._by_context.values():
            transport.close()


class ProxyRouter(httpx.BaseTransport):
    """Sends each request through `proxied` unless NO_PROXY exempts its host and port, then through `direct`."""

    def __init__(self, direct, proxied, no_proxy, default_port):
        self.direct = direct
        self.proxied = proxied
        self.no_proxy = no_proxy
        self.default_port = default_port

    def handle_request(self, request):
        url = request.url
        exempt = self.no_proxy.matches(url.host, url.port or self.default_port)
        return (self.direct if exempt else self.proxied).handle_request(request)

    def close(self):
        self.direct.close()
        self.proxied.close()


class HttpClient:
    """Wraps one httpx.Client for the whole run; see the module docstring."""

    def __init__(self, settings, environ=None, cancellation=None, on_throttled=None):
        """`environ` (default os.environ) supplies the proxy variables (registry/proxy.py); `cancellation` is the
        run's stop switch (occystrap.cancel); `on_throttled()` is called for every 429 answer (the run's count)."""
        from occystrap.registry.proxy import ProxyConfig
        self.settings = settings
        # The run's stop switch (occystrap.cancel): retry waits end when the run is cancelled.
        self.cancellation = cancellation or Cancellation()
        self.retry = RetryPolicy(settings.retries, sleep=self.cancellation.sleep)
        self.limiter = TokenBucket(settings.rate_limit) if settings.rate_limit else None
        self.proxies = ProxyConfig(environ)
        for scheme in ('http', 'https'):
            proxy = self.proxies.for_scheme(scheme)
            if proxy is not None:
                LOG.info('%s requests go through proxy %s (from %s)', scheme, proxy.display, proxy.variable)
        # Enough connections for every layer transfer of every image in flight, plus token and manifest requests.
        connections = max(8, settings.parallel * settings.image_parallel + 2 * settings.image_parallel)
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._lock = threading.Lock()
        self._ssl = None
        self._tls_lock = threading.Lock()
        self._host_tls = {}           # registry authority -> certsd.HostTls or None, looked up once per run
        self._contexts = {}           # (HostTls, verify) -> ssl.SSLContext, for hosts that need their own
        self._answered = set()        # hosts that sent any answer in this run (see request())
        plain = self._routed('http', lambda proxy: httpx.HTTPTransport(verify=False, limits=limits, proxy=proxy))
        # The TLS context costs ~0.15 s to build (certifi + system store), so a plain-HTTP run never builds it.
        tls = TlsRouter(self, lambda context: self._routed('https', lambda proxy: httpx.HTTPTransport(
            verify=context or self.ssl_context(), http2=settings.http2, limits=limits, proxy=proxy)))
        self.client = httpx.Client(transport=tls, mounts={'http://': plain}, timeout=TIMEOUT,
                                   follow_redirects=False, headers={'User-Agent': 'occystrap/%s' % __version__})
        # Transfers (request(transfer=True), and every request body) go over HTTP/1.1, one connection each:
        # - concurrent uploads on one HTTP/2 connection stalled in httpcore's flow-control wait until the write
        #   timeout (4 uploads through a 40 ms link), and would share the registry's ~1 MiB upload window anyway;
        # - through 40 ms and 200 Mbit/s per connection, the 24-layer pull took 8.3 s with every blob on one HTTP/2
        #   connection and 5.5 s over HTTP/1.1 connections (docs/performance.md).
        # Manifests, tags, catalogs, the API root and tokens stay on HTTP/2, multiplexed on one connection;
        # RegistryClient marks every blob request a transfer, HEAD checks and configs included.
        transfer_tls = TlsRouter(self, lambda context: self._routed('https', lambda proxy: httpx.HTTPTransport(
            verify=context or self.ssl_context(), http2=False, limits=limits, proxy=proxy)))
        self.transfer_client = httpx.Client(transport=transfer_tls, mounts={'http://': plain}, timeout=TIMEOUT,
                                            follow_redirects=False,
                                            headers={'User-Agent': 'occystrap/%s' % __version__})
        self.versions = {}            # host -> HTTP version of its last answer ('HTTP/2', 'HTTP/1.1')
        self.last_http_version = None
        self.requests = 0             # answers received (retries included), for tests and --verbose
        self.retried = 0
        self.throttled = 0            # 429 answers received, retried or not
        self._on_throttled = on_throttled

    def _routed(self, scheme, make):
        """The transport for URLs of `scheme`: make(None), or make(proxy) where the environment sets one.

        Passing a transport to httpx turns its own reading of the proxy variables off, so they are read here.
        """
        proxy = self.proxies.for_scheme(scheme)
        direct = LazyTransport(lambda: make(None))
        if proxy is None:
            return direct

        def proxied():
            # An https:// proxy is verified like a registry (certifi, the system store and --ca-cert).
            context = self.ssl_context() if proxy.url.startswith('https:') else None
            return make(httpx.Proxy(proxy.url, ssl_context=context))
        return ProxyRouter(direct, LazyTransport(proxied), self.proxies.no_proxy,
                           80 if scheme == 'http' else 443)

    def _unreachable(self, url, error, attempt, refused_first=False):
        """The ConnectionFailed for a request that got no answer, naming the proxy (never its credentials)."""
        host = host_of(url)
        proxy = self.proxies.for_url(url)
        via = ' through proxy %s' % proxy.display if proxy else ''
        if refused_first:
            port_of = "the proxy's port" if proxy else 'the port'
            return ConnectionFailed('cannot reach %s%s: connection refused (is %s right?)' % (host, via, port_of))
        suffix = ' (after %d retries)' % attempt if attempt else ''
        reason = describe_transport_error(error)
        if proxy is not None and proxy.password:
            reason = reason.replace(proxy.password, '***')
        return ConnectionFailed('cannot reach %s%s: %s%s' % (host, via, reason, suffix))

    def ssl_context(self):
        """The run's one verifying TLS context, built on first use."""
        with self._lock:
            if self._ssl is None:
                self._ssl = ssl_context(self.settings.ca_cert)
            return self._ssl

    def host_context(self, registry, verify=True):
        """The TLS context of its own for `registry` (HOST[:PORT]), or None when the run's shared one applies.

        A host has its own when a certs.d directory has material for it or `verify` is False; each is built on
        first use and kept for the run. Raises OccystrapError for unusable certs.d material.
        """
        host_tls = self._host_tls.get(registry, False)
        if host_tls is False:
            with self._tls_lock:
                host_tls = self._host_tls.get(registry, False)
                if host_tls is False:
                    host_tls = self._host_tls[registry] = certsd.find(registry)
                    if host_tls is not None:
                        LOG.info('TLS settings for %s from %s', registry, host_tls.directory)
        if host_tls is None and verify:
            return None
        key = (host_tls, bool(verify))
        context = self._contexts.get(key)
        if context is None:
            with self._tls_lock:
                context = self._contexts.get(key)
                if context is None:
                    context = self._contexts[key] = host_ssl_context(host_tls, verify, self.settings.ca_cert)
        return context

    def scheme(self, insecure=False):
        """'http' when --insecure or the URI asks for it, else 'https'."""
        return 'http' if insecure or self.settings.insecure else 'https'

    def http_version(self, host):
        """The HTTP version the last answer from `host` came over, or None."""
        return self.versions.get(host)

    def request(self, method, url, headers=None, content=None, stream=False, retry=True, params=None,
                transfer=False, limit=DOCUMENT_LIMIT, what=None, tls_verify=True):
        """Send a request, retrying connection errors, 429 and 5xx; returns the httpx.Response.

        `content` is bytes, None, or a callable returning a fresh body (bytes or an iterator of bytes) for each
        attempt. With `stream=True` the body is left unread: the caller must close the response. Otherwise the body
        is read (see `buffered`): more than `limit` bytes raise RegistryError naming `what`. Raises
        ConnectionFailed when the server stays unreachable. With `retry=False` nothing is retried. `transfer=True`
        says the request moves bulk data (a blob download or upload): it goes over an HTTP/1.1 connection of its
        own, as does every request that sends a body. `tls_verify=False` skips certificate verification for this
        request (a registry URI's ?tls-verify=false).
        """
        what = what or 'the answer to %s %s' % (method, without_query(url))
        extensions = {'trace': self.cancellation.trace}
        if not tls_verify:
            extensions[TLS_VERIFY] = False
        attempt = 0
        while True:
            if self.limiter is not None:
                self.limiter.acquire()
            body = content() if callable(content) else content
            try:
                bulk = transfer or body is not None
                client = self.transfer_client if bulk else self.client
                req = client.build_request(method, url, headers=headers, content=body, params=params,
                                           extensions=extensions)
                response = client.send(req, stream=True)
                if not stream:
                    response = buffered(response, limit, what)
            except httpx.InvalidURL:
                # httpx parses a redirect's Location even when it does not follow it.
                raise unusable_redirect(what) from None
            except httpx.TransportError as e:
                if isinstance(e, httpx.RemoteProtocolError) and 'location header' in str(e):
                    raise unusable_redirect(what) from None
                # A refused connection to a host that has not answered once in this run is a wrong port or nothing
                # running there: retrying would only wait. One that answered before may be restarting: retry.
                refused_first = connection_refused(e) and host_of(url) not in self._answered
                if not retry or attempt >= self.retry.retries or _permanent(e) or refused_first:
                    raise self._unreachable(url, e, attempt, refused_first)
                waited = self.retry.wait(attempt)
                LOG.info('%s %s failed (%s); retry %d in %.2fs', method, without_query(url),
                         type(e).__name__, attempt + 1, waited)
                attempt += 1
                with self._lock:
                    self.retried += 1
                continue
            self._record(method, url, response, bulk)
            if response.status_code == 429:
                with self._lock:
                    self.throttled += 1
                if self._on_throttled is not None:
                    self._on_throttled()
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
            self._answered.add(host)
            if not bulk:   # what was negotiated for the host; blob transfers are HTTP/1.1 by choice
                self.versions[host] = response.http_version
                self.last_http_version = response.http_version
        LOG.debug('%s %s -> %d (%s)', method, without_query(url), response.status_code, response.http_version)

    def close(self):
        self.client.close()
        self.transfer_client.close()
