"""Proxies that put distance and faults between a client and a registry, for tests and benchmarks.

DelayProxy (command line and ``start_proxy_thread``) is a userspace TCP proxy that models a long link:

- ``--latency MS`` is the added round-trip time; every chunk of data in each direction is held for half of
  it before it is passed on, like a pipe, so the delay applies to every exchange and not only to connecting.
- ``--bandwidth MBIT`` caps each connection's throughput per direction with a token bucket (as a CDN or a
  congested path does per TCP flow); 0 means no cap.
- ``--window KIB`` bounds the bytes a connection may have in flight per direction before the far end has
  "acknowledged" them (one added round trip after delivery), like a TCP window. It is what keeps memory
  bounded (reading stops and the kernel applies backpressure) and limits one connection to
  window / latency, as a real long-distance connection is.

It works at the TCP level, so it carries TLS and HTTP/2 unchanged. Byte order within each direction is
preserved and half-closes are forwarded after the delay.

FaultProxy is an HTTP (or HTTPS) reverse proxy for tests that injects faults into matching requests (see Rule):
drop the connection part way through a response body, answer 429/503 with Retry-After, flip one byte of a
body while keeping its Content-Length, or play a hostile server: any answer of its own (a redirect, a challenge,
garbage), a huge body (with Content-Length, chunked or ended by closing; optionally gzip-compressed), or raw bytes
that are not HTTP. Everything else (methods, bodies, Range requests, headers) passes through to a plain or TLS
registry; Location headers that point at the registry are rewritten to point at the proxy. Every request it
receives is kept in `received` with its scheme and headers, so a test can see what a client sent in clear text.

Usage::

    python tools/delayproxy.py --listen 127.0.0.1:0 --target 127.0.0.1:5000 --latency 40 --bandwidth 100
"""

import argparse
import asyncio
import collections
import http.client
import http.server
import re
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import zlib

try:
    from tools.loopback import BackgroundHTTPServer, server_context
except ImportError:  # run as a script from tools/
    from loopback import BackgroundHTTPServer, server_context

CHUNK = 64 * 1024
DEFAULT_WINDOW = 4 * 1024 * 1024


# ---------------------------------------------------------------------------------------------------------
# Delay proxy
# ---------------------------------------------------------------------------------------------------------

class _TokenBucket:
    """Paces writes to `rate` bytes per second with a small burst allowance."""

    def __init__(self, rate):
        self.rate = rate
        self.burst = max(16 * 1024, rate / 50)
        self.tokens = 0.0
        self.stamp = time.monotonic()

    async def take(self, n):
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class _Window:
    """Bytes in flight in one direction; readers wait while it is full."""

    def __init__(self, size):
        self.size = size
        self.used = 0
        self.cond = asyncio.Condition()

    async def acquire(self, n):
        async with self.cond:
            await self.cond.wait_for(lambda: self.used == 0 or self.used + n <= self.size)
            self.used += n

    async def release(self, n):
        async with self.cond:
            self.used -= n
            self.cond.notify_all()


class DelayProxy:
    """An asyncio TCP proxy adding latency, a per-connection bandwidth cap and a bounded window."""

    def __init__(self, target, latency_ms=0.0, bandwidth_mbit=0.0, window=DEFAULT_WINDOW,
                 listen=('127.0.0.1', 0)):
        self.target = _split_hostport(target)
        self.one_way = max(0.0, latency_ms) / 2000.0
        self.rate = bandwidth_mbit * 1e6 / 8 if bandwidth_mbit else 0.0
        self.window = window
        self.listen = _split_hostport(listen)
        self.server = None
        self.connections = 0
        self._tasks = set()

    async def start(self):
        self.server = await asyncio.start_server(self._handle, self.listen[0], self.listen[1])
        return self.server.sockets[0].getsockname()[:2]

    async def stop(self):
        if self.server:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server:
            await self.server.wait_closed()

    async def _handle(self, client_reader, client_writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        upstream_writer = None
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            for writer in (client_writer, upstream_writer):
                sock = writer.get_extra_info('socket')
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipes = [asyncio.ensure_future(self._pipe(client_reader, upstream_writer)),
                     asyncio.ensure_future(self._pipe(upstream_reader, client_writer))]
            try:
                # A reset on either side ends both directions.
                await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader, writer):
        """Copy reader to writer, delivering each chunk one_way seconds after it was read."""
        queue = asyncio.Queue()
        window = _Window(self.window)
        bucket = _TokenBucket(self.rate) if self.rate else None
        loop = asyncio.get_running_loop()

        read_size = max(1, min(CHUNK, self.window))

        async def receive():
            try:
                while True:
                    data = await reader.read(read_size)
                    if not data:
                        break
                    await window.acquire(len(data))
                    queue.put_nowait((loop.time() + self.one_way, data))
            except (ConnectionError, OSError):
                pass
            queue.put_nowait((loop.time() + self.one_way, None))

        async def deliver():
            while True:
                due, data = await queue.get()
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                for start in range(0, len(data), 16 * 1024):
                    piece = data[start:start + 16 * 1024]
                    if bucket:
                        await bucket.take(len(piece))
                    writer.write(piece)
                    await writer.drain()
                # The window opens again when the acknowledgement would arrive back, one way later.
                loop.call_later(self.one_way, lambda n=len(data): asyncio.ensure_future(window.release(n)))

        receiver = asyncio.ensure_future(receive())
        try:
            await deliver()
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


def _split_hostport(value):
    if isinstance(value, (tuple, list)):
        return value[0], int(value[1])
    host, _, port = value.rpartition(':')
    return host.strip('[]') or '127.0.0.1', int(port)


def start_proxy_thread(target, latency_ms=0.0, bandwidth_mbit=0.0, window=DEFAULT_WINDOW):
    """Run a DelayProxy on 127.0.0.1 in a background thread.

    target is 'host:port' or (host, port). Returns (host, port, stop_fn); stop_fn closes the listener and
    every open connection and waits for the thread to end, and its `proxy` attribute is the DelayProxy (whose
    `connections` counts the connections accepted).
    """
    loop = asyncio.new_event_loop()
    proxy = DelayProxy(target, latency_ms, bandwidth_mbit, window)
    started = threading.Event()
    address = []

    def run():
        asyncio.set_event_loop(loop)
        address.extend(loop.run_until_complete(proxy.start()))
        started.set()
        loop.run_forever()
        loop.run_until_complete(proxy.stop())
        loop.close()

    thread = threading.Thread(target=run, name='delayproxy', daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError('delay proxy did not start')

    def stop():
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    stop.proxy = proxy
    return address[0], address[1], stop


async def _serve(args):
    proxy = DelayProxy(args.target, args.latency, args.bandwidth, args.window * 1024, args.listen)
    host, port = await proxy.start()
    print(f'listening {host}:{port}', flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await proxy.stop()


# ---------------------------------------------------------------------------------------------------------
# Fault proxy
# ---------------------------------------------------------------------------------------------------------

FRAMINGS = ('length', 'chunked', 'close')


class Rule:
    """One fault: applies to requests whose path (with query) matches `path`, method is in `methods` and, when
    `scheme` is given ('http' or 'https'), that arrived over that scheme.

    kind 'drop': send the response headers and `after_bytes` bytes of the body, then close the connection.
    kind 'status': answer `status` (429 or 503) with `Retry-After: retry_after` instead of forwarding; `payload`
    (bytes) replaces the registry-style JSON error body, e.g. to send a hostile error message.
    kind 'corrupt': flip one byte of the body (at `offset`, default the middle), keeping Content-Length.
    kind 'answer': answer `status` with `headers` and a body instead of forwarding. Header values may hold
    {netloc} (the proxy's host:port), {port} and {path} (the request's path and query). The body is `body`,
    or with `size` that many bytes repeating `fill`, gzip-compressed when `encoding='gzip'` (the size is then
    the uncompressed one); `framing` is 'length' (Content-Length), 'chunked' or 'close' (no length, the
    connection closes after).
    kind 'raw': write `body` to the connection as it is (not HTTP) and close it.

    A rule fires for the first `count` matching requests (None: always); 'drop' and 'corrupt' only count
    responses that have a body. FaultProxy.hits[name] says how often it fired.
    """

    def __init__(self, kind, path, count=1, methods=('GET',), after_bytes=0, status=429, retry_after='1',
                 offset=None, name=None, payload=None, headers=None, body=b'', size=None, fill=b'\0',
                 framing='length', encoding=None, scheme=None):
        if kind not in ('drop', 'status', 'corrupt', 'answer', 'raw'):
            raise ValueError(f'unknown fault kind {kind!r}')
        if framing not in FRAMINGS:
            raise ValueError(f'framing must be one of {FRAMINGS}, not {framing!r}')
        if encoding not in (None, 'gzip'):
            raise ValueError(f'unknown encoding {encoding!r}')
        self.kind = kind
        self.pattern = re.compile(path)
        self.count = count
        self.methods = tuple(m.upper() for m in methods) if methods else None
        self.after_bytes = after_bytes
        self.status = status
        self.retry_after = retry_after
        self.offset = offset
        self.payload = payload
        self.name = name or f'{kind}:{path}'
        self.headers = dict(headers or {})
        self.body = body
        self.size = size
        self.fill = fill or b'\0'
        self.framing = framing
        self.encoding = encoding
        self.scheme = scheme
        self._compressed = None
        self._lock = threading.Lock()

    def matches(self, method, path, scheme=None):
        return ((self.methods is None or method in self.methods) and self.pattern.search(path) is not None
                and (self.scheme is None or scheme is None or self.scheme == scheme))

    def chunks(self):
        """The answer's body in pieces of at most CHUNK bytes, generated as it is sent (a huge one is never held)."""
        if self.size is None:
            for start in range(0, len(self.body), CHUNK):
                yield self.body[start:start + CHUNK]
            return
        if self.encoding == 'gzip':
            data = self._gzipped()
            for start in range(0, len(data), CHUNK):
                yield data[start:start + CHUNK]
            return
        block = (self.fill * (CHUNK // len(self.fill) + 1))[:CHUNK]
        remaining = self.size
        while remaining > 0:
            piece = block if remaining >= CHUNK else block[:remaining]
            remaining -= len(piece)
            yield piece

    def _gzipped(self):
        # Compressed once per rule: a gigabyte of one repeated byte is about a megabyte of gzip.
        with self._lock:
            if self._compressed is None:
                compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
                block = (self.fill * (CHUNK // len(self.fill) + 1))[:CHUNK]
                parts, remaining = [], self.size
                while remaining > 0:
                    piece = block if remaining >= CHUNK else block[:remaining]
                    parts.append(compressor.compress(piece))
                    remaining -= len(piece)
                parts.append(compressor.flush())
                self._compressed = b''.join(parts)
            return self._compressed

    def body_length(self):
        if self.size is None:
            return len(self.body)
        return len(self._gzipped()) if self.encoding == 'gzip' else self.size


def drop_after(path, nbytes, count=1, **kwargs):
    """A rule that cuts the connection after nbytes of a matching response body."""
    return Rule('drop', path, count=count, after_bytes=nbytes, **kwargs)


def respond_status(path, status=429, count=1, retry_after='1', **kwargs):
    """A rule that answers the first count matching requests with status and Retry-After."""
    return Rule('status', path, count=count, status=status, retry_after=retry_after, **kwargs)


def corrupt(path, count=1, offset=None, **kwargs):
    """A rule that flips one byte of a matching response body."""
    return Rule('corrupt', path, count=count, offset=offset, **kwargs)


def answer(path, status, headers=None, body=b'', count=None, **kwargs):
    """A rule that answers matching requests itself (see Rule, kind 'answer'); always, unless count is given."""
    return Rule('answer', path, count=count, status=status, headers=headers, body=body, **kwargs)


def redirect(path, location, status=307, **kwargs):
    """A rule that redirects matching requests to `location` (a template: {netloc}, {port}, {path})."""
    return answer(path, status, headers={'Location': location}, **kwargs)


def challenge(path, www_authenticate, **kwargs):
    """A rule that answers 401 with the given WWW-Authenticate header (a template: {netloc}, {path})."""
    return answer(path, 401, headers={'WWW-Authenticate': www_authenticate, 'Content-Type': 'application/json'},
                  body=b'{"errors":[{"code":"UNAUTHORIZED","message":"injected challenge"}]}', **kwargs)


def huge(path, size, status=200, framing='length', encoding=None, fill=b'[', **kwargs):
    """A rule that answers matching requests with a body of `size` bytes of `fill`, sent as it is generated."""
    headers = dict(kwargs.pop('headers', None) or {})
    headers.setdefault('Content-Type', 'application/json')
    return answer(path, status, headers=headers, size=size, fill=fill, framing=framing, encoding=encoding, **kwargs)


def raw(path, data, count=None, **kwargs):
    """A rule that writes `data` instead of an HTTP answer and closes the connection."""
    return Rule('raw', path, count=count, body=data, **kwargs)


Received = collections.namedtuple('Received', 'scheme method path headers')


HOP_BY_HOP = {'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
              'proxy-authenticate', 'proxy-authorization'}


class _FaultHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        self._proxy()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    @property
    def scheme(self):
        return 'https' if isinstance(self.connection, ssl.SSLSocket) else 'http'

    def _proxy(self):
        owner = self.server.owner
        method = self.command
        owner._received(Received(self.scheme, method, self.path, dict(self.headers.items())))
        rule = owner._claim(method, self.path, ('status', 'answer', 'raw'), scheme=self.scheme)
        body = self._request_body()
        if rule is not None:
            if body is not None:
                for _ in body:
                    pass
            # Recorded first: a client that has the answer may look at the record at once.
            owner._record(method, self.path, rule.status if rule.kind != 'raw' else None,
                          None if rule.kind == 'status' else rule.kind)
            if rule.kind == 'status':
                self._send_status_fault(rule)
            elif rule.kind == 'raw':
                self._send_raw(rule)
            else:
                self._send_answer(rule)
            return
        # Without Content-Length, http.client re-frames a generator body as chunked, as the client sent it.
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {'host', 'expect'}}
        headers['Host'] = owner.target_netloc
        upstream = self.upstream_connection()
        try:
            try:
                upstream.request(method, self.path, body=body, headers=headers)
                response = upstream.getresponse()
            except OSError as exc:
                self.send_error(502, f'upstream: {exc}')
                owner._record(method, self.path, 502)
                return
            self._relay(response, method)
        finally:
            upstream.close()

    def upstream_connection(self):
        """A new http.client connection to the server this proxy stands in front of (TLS when it speaks TLS)."""
        owner = self.server.owner
        if owner.upstream_tls is not None:
            return http.client.HTTPSConnection(owner.target_host, owner.target_port, timeout=60,
                                               context=owner.upstream_tls)
        return http.client.HTTPConnection(owner.target_host, owner.target_port, timeout=60)

    def _request_body(self):
        length = self.headers.get('Content-Length')
        if 'chunked' in self.headers.get('Transfer-Encoding', '').lower():
            return self._read_chunked()
        if length is not None and int(length) > 0:
            return self._read_exact(int(length))
        return None

    def _read_exact(self, length):
        remaining = length
        while remaining:
            data = self.rfile.read(min(CHUNK, remaining))
            if not data:
                raise ConnectionError('client closed during request body')
            remaining -= len(data)
            yield data

    def _read_chunked(self):
        while True:
            size = int(self.rfile.readline().split(b';')[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                    pass
                return
            yield from self._read_exact(size)
            self.rfile.readline()

    def _send_status_fault(self, rule):
        payload = rule.payload
        if payload is None:
            payload = (b'{"errors":[{"code":"TOOMANYREQUESTS","message":"injected fault","detail":null}]}'
                       if rule.status == 429 else
                       b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault","detail":null}]}')
        self.send_response(rule.status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Retry-After', str(rule.retry_after))
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(payload)

    def _send_raw(self, rule):
        self.close_connection = True
        try:
            self.wfile.write(rule.body)
            self.wfile.flush()
        except OSError:
            pass
        self._abort()

    def _send_answer(self, rule):
        netloc = self.server.owner.netloc
        values = {'netloc': netloc, 'port': netloc.rsplit(':', 1)[1], 'path': self.path}
        self.send_response(rule.status)
        for key, value in rule.headers.items():
            self.send_header(key, value.format(**values))
        if rule.encoding:
            self.send_header('Content-Encoding', rule.encoding)
        if rule.framing == 'length':
            self.send_header('Content-Length', str(rule.body_length()))
        elif rule.framing == 'chunked':
            self.send_header('Transfer-Encoding', 'chunked')
        else:
            self.send_header('Connection', 'close')
            self.close_connection = True
        self.end_headers()
        if self.command == 'HEAD':
            return
        try:
            for chunk in rule.chunks():
                if rule.framing == 'chunked':
                    self.wfile.write(b'%x\r\n%s\r\n' % (len(chunk), chunk))
                else:
                    self.wfile.write(chunk)
            if rule.framing == 'chunked':
                self.wfile.write(b'0\r\n\r\n')
            self.wfile.flush()
        except OSError:
            # The client stopped reading (as it should, for a huge body): nothing more to send.
            self.close_connection = True
        if rule.framing == 'close':
            self._abort()

    def _relay(self, response, method):
        owner = self.server.owner
        length = response.getheader('Content-Length')
        has_body = method != 'HEAD' and response.status not in (204, 304) and response.status >= 200
        data = None
        if has_body and length is None:
            # Unframed upstream bodies (chunked or close-delimited) are small JSON; re-frame them.
            data = response.read()
            length = str(len(data))
        rule = owner._claim(method, self.path, ('drop', 'corrupt'), int(length or 0) if has_body else 0,
                            scheme=self.scheme)
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            lower = key.lower()
            if lower in HOP_BY_HOP or lower == 'content-length':
                continue
            if lower == 'location':
                value = owner._rewrite_location(value)
            self.send_header(key, value)
        if has_body or length is not None:
            self.send_header('Content-Length', length or '0')
        self.end_headers()
        owner._record(method, self.path, response.status, rule.kind if rule else None)
        if not has_body:
            return
        total = int(length)
        flip_at = None
        if rule is not None and rule.kind == 'corrupt':
            flip_at = rule.offset if rule.offset is not None else total // 2
        sent = 0
        chunks = [data] if data is not None else iter(lambda: response.read(CHUNK), b'')
        for chunk in chunks:
            if flip_at is not None and sent <= flip_at < sent + len(chunk):
                chunk = bytearray(chunk)
                chunk[flip_at - sent] ^= 0xff
                chunk = bytes(chunk)
            if rule is not None and rule.kind == 'drop' and sent + len(chunk) >= rule.after_bytes:
                self.wfile.write(chunk[:rule.after_bytes - sent])
                self.wfile.flush()
                self._abort()
                return
            self.wfile.write(chunk)
            sent += len(chunk)

    def _abort(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FaultProxy(BackgroundHTTPServer):
    """A reverse proxy to target_url (http or https) that injects the faults described by rules.

    start() binds 127.0.0.1 on a free port and serves in a thread; url is then 'http://127.0.0.1:PORT', or
    'https://...' with `tls=(certfile, keyfile)`; then `plain` says what plain HTTP to that port gets (see
    tools/loopback.py: 'serve' answers it too, so a test sees what was sent in clear). An https target is verified
    with `upstream_ca` (a PEM file). hits maps rule name to the number of times it fired; requests lists
    (method, path, status, fault); received lists every request as Received(scheme, method, path, headers).
    """

    def __init__(self, target_url, rules=(), tls=None, plain='serve', upstream_ca=None):
        parsed = urllib.parse.urlsplit(target_url)
        if parsed.scheme not in ('http', 'https'):
            raise ValueError('FaultProxy forwards to http or https registries')
        self.target_url = f'{parsed.scheme}://{parsed.netloc}'
        self.target_netloc = parsed.netloc
        self.target_host = parsed.hostname
        self.target_port = parsed.port or (443 if parsed.scheme == 'https' else 80)
        self.upstream_tls = ssl.create_default_context(cafile=upstream_ca) if parsed.scheme == 'https' else None
        self.rules = list(rules)
        self.hits = {rule.name: 0 for rule in self.rules}
        self.requests = []
        self.received = []
        self._lock = threading.Lock()
        super().__init__(tls=server_context(*tls) if tls else None, plain=plain)

    thread_name = 'faultproxy'
    handler = _FaultHandler

    def _claim(self, method, path, kinds, body_length=0, scheme=None):
        """Find the first rule of one of `kinds` that should fire now, and count it."""
        with self._lock:
            for rule in self.rules:
                if rule.kind not in kinds:
                    continue
                if rule.kind == 'corrupt' and body_length == 0:
                    continue
                if rule.kind == 'drop' and body_length <= rule.after_bytes:
                    continue
                if not rule.matches(method, path, scheme):
                    continue
                if rule.count is not None and self.hits[rule.name] >= rule.count:
                    continue
                self.hits[rule.name] += 1
                return rule
        return None

    def _record(self, method, path, status, fault=None):
        with self._lock:
            self.requests.append((method, path, status, fault))

    def _received(self, entry):
        with self._lock:
            self.received.append(entry)

    def _rewrite_location(self, value):
        if value.startswith(self.target_url):
            return self.url + value[len(self.target_url):]
        return value


def main(argv=None):
    parser = argparse.ArgumentParser(description='TCP proxy adding latency and a per-connection bandwidth cap.')
    parser.add_argument('--listen', default='127.0.0.1:0', help='address to listen on (default 127.0.0.1:0)')
    parser.add_argument('--target', required=True, help='HOST:PORT to forward to')
    parser.add_argument('--latency', type=float, default=0.0, help='added round trip in ms, half each way')
    parser.add_argument('--bandwidth', type=float, default=0.0, help='per-connection cap in Mbit/s per direction')
    parser.add_argument('--window', type=int, default=DEFAULT_WINDOW // 1024,
                        help='bytes in flight per connection and direction, in KiB (default %(default)s)')
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == '__main__':
    sys.exit(main())
