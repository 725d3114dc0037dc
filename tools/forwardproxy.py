"""A forward HTTP proxy on loopback for tests: CONNECT tunnels and absolute-URI requests, each one counted.

It is what `HTTPS_PROXY`/`HTTP_PROXY` point at in tests/test_proxies.py:

- ``CONNECT host:port`` opens a TCP tunnel (TLS passes through untouched) and records ``host:port`` in ``connects``;
- ``GET http://host:port/path`` (any method) is forwarded and recorded in ``requests`` as (method, URL);
- with ``credentials=(user, password)`` every request must carry them in ``Proxy-Authorization`` (Basic), else
  it is answered 407 and counted in ``refused``.

Only loopback targets are served (127.0.0.0/8, ::1, localhost); others get 403, so a test can never reach out.

Usage::

    python tools/forwardproxy.py --listen-port 0
"""

import argparse
import base64
import http.client
import http.server
import ipaddress
import select
import socket
import threading
import urllib.parse

try:
    from tools.loopback import BackgroundHTTPServer
except ImportError:  # run as a script from tools/
    from loopback import BackgroundHTTPServer

CHUNK = 64 * 1024
HOP_BY_HOP = {'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te',
              'trailer', 'transfer-encoding', 'upgrade'}


def _loopback(host):
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, fmt, *args):
        pass

    @property
    def owner(self):
        return self.server.owner

    def _authorized(self):
        expected = self.owner.credentials
        if expected is None:
            return True
        token = base64.b64encode(('%s:%s' % expected).encode()).decode()
        if self.headers.get('Proxy-Authorization', '') == 'Basic ' + token:
            return True
        with self.owner.lock:
            self.owner.refused += 1
        self._plain(407, b'proxy credentials required\n', {'Proxy-Authenticate': 'Basic realm="test proxy"'})
        return False

    def _plain(self, status, body=b'', headers=None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self):
        if not self._authorized():
            return
        host, _, port = self.path.rpartition(':')
        if not port.isdigit() or not _loopback(host):
            self._plain(403, b'only loopback targets\n')
            return
        with self.owner.lock:
            self.owner.connects.append(self.path)
        try:
            upstream = socket.create_connection((host.strip('[]'), int(port)), timeout=10)
        except OSError:
            self._plain(502, b'cannot connect\n')
            return
        self.send_response(200, 'Connection Established')
        self.end_headers()
        self.wfile.flush()
        self._tunnel(self.connection, upstream)
        self.close_connection = True

    @staticmethod
    def _tunnel(client, upstream):
        sockets = [client, upstream]
        try:
            while True:
                readable, _, broken = select.select(sockets, [], sockets, 60)
                if broken or not readable:
                    return
                for sock in readable:
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except OSError:
            return
        finally:
            upstream.close()

    def _forward(self):
        if not self._authorized():
            return
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != 'http' or not url.hostname:
            self._plain(400, b'absolute http:// URL expected\n')
            return
        if not _loopback(url.hostname):
            self._plain(403, b'only loopback targets\n')
            return
        with self.owner.lock:
            self.owner.requests.append((self.command, self.path))
        body = self._request_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        path = urllib.parse.urlunsplit(('', '', url.path or '/', url.query, ''))
        upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
        try:
            upstream.request(self.command, path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        except OSError:
            self._plain(502, b'upstream failed\n')
            return
        finally:
            upstream.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != 'content-length':
                self.send_header(key, value)
        self.send_header('Content-Length', str(response.getheader('Content-Length') or len(data))
                         if self.command == 'HEAD' else str(len(data)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(data)

    def _request_body(self):
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            parts = []
            while True:
                size = int(self.rfile.readline().split(b';')[0].strip() or b'0', 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    return b''.join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get('Content-Length') or 0)
        return self.rfile.read(length) if length else None

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


class ForwardProxy(BackgroundHTTPServer):
    """The proxy server; see the module docstring. ``url`` is ``http://127.0.0.1:PORT`` once started."""

    handler = _Handler
    thread_name = 'forward-proxy'

    def __init__(self, port=0, credentials=None):
        super().__init__(port)
        self.credentials = credentials
        self.lock = threading.Lock()
        self.connects = []
        self.requests = []
        self.refused = 0

    @property
    def address(self):
        """``127.0.0.1:PORT``."""
        return self.url.split('://', 1)[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--listen-port', type=int, default=0)
    args = parser.parse_args(argv)
    proxy = ForwardProxy(args.listen_port).start()
    print(proxy.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()


if __name__ == '__main__':
    main()
