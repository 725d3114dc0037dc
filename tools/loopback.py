"""A threaded HTTP server on 127.0.0.1 served from a background thread, shared by the test and benchmark doubles.

With a TLS context the server speaks HTTPS, and decides per connection from its first byte what a client that speaks
plain HTTP to the TLS port gets (``plain``): ``'serve'`` answers it over plain HTTP on the same port (so a test can
see what a client sent in clear text), ``'go'`` answers as Go's net/http does (a bare 400 "Client sent an HTTP
request to an HTTPS server."), ``'alert'`` sends a TLS alert record, as OpenSSL-based servers do, and closes.
"""

import http.server
import socket
import socketserver
import ssl
import threading

TLS_HANDSHAKE = 0x16
GO_PLAIN_TO_TLS = b'HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n'
TLS_ALERT = b'\x15\x03\x03\x00\x02\x02\x46'      # fatal alert 70, protocol_version, in a TLS 1.2 record
PLAIN_MODES = ('serve', 'go', 'alert')


class LoopbackServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threaded HTTP server for the doubles: daemon request threads, and a listen backlog for bursts."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: a client opening more connections at once than that (occystrap -J 6
    # checks 24 tags in parallel) has its SYNs dropped and retried after a second, which a real server would not do.
    request_queue_size = 128
    tls = None           # an ssl.SSLContext for the server side, or None for plain HTTP
    plain = 'serve'      # what plain HTTP to a TLS server gets, see the module docstring

    def finish_request(self, request, client_address):
        if self.tls is None:
            return super().finish_request(request, client_address)
        # The first byte tells a TLS handshake from a plain-HTTP request; it runs in the connection's own thread.
        request.settimeout(30)
        try:
            first = request.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first and first[0] == TLS_HANDSHAKE:
            try:
                wrapped = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
            try:
                wrapped.settimeout(None)
                super().finish_request(wrapped, client_address)
            finally:
                wrapped.close()
            return
        request.settimeout(None)
        if self.plain == 'serve':
            return super().finish_request(request, client_address)
        try:
            request.recv(65536)
            request.sendall(GO_PLAIN_TO_TLS if self.plain == 'go' else TLS_ALERT)
        except OSError:
            pass


def server_context(certfile, keyfile):
    """An SSLContext serving the certificate chain in certfile with keyfile (PEM files)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return context


class BackgroundHTTPServer:
    """Base of a server object: start() binds 127.0.0.1:`port` (0: a free one) and serves `handler` in a thread.

    The handler reaches this object as `self.server.owner`; `url` is the base URL once started. `tls` is an
    ssl.SSLContext (see server_context) to serve HTTPS, `plain` what plain HTTP to it gets (module docstring).
    """

    handler = None
    thread_name = 'loopback-http'

    def __init__(self, port=0, tls=None, plain='serve'):
        if plain not in PLAIN_MODES:
            raise ValueError(f'plain must be one of {PLAIN_MODES}, not {plain!r}')
        self.port = port
        self.tls = tls
        self.plain = plain
        self.url = None
        self.netloc = None
        self._server = None
        self._thread = None

    def start(self):
        self._server = LoopbackServer(('127.0.0.1', self.port), self.handler)
        self._server.owner = self
        self._server.tls = self.tls
        self._server.plain = self.plain
        self.netloc = '127.0.0.1:%d' % self._server.server_address[1]
        self.url = '%s://%s' % ('https' if self.tls else 'http', self.netloc)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name=self.thread_name,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
