"""A threaded HTTP server on 127.0.0.1 served from a background thread, shared by the test and benchmark doubles."""

import http.server
import socketserver
import threading


class LoopbackServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threaded HTTP server for the doubles: daemon request threads, and a listen backlog for bursts."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: a client opening more connections at once than that (occystrap -J 6
    # checks 24 tags in parallel) has its SYNs dropped and retried after a second, which a real server would not do.
    request_queue_size = 128


class BackgroundHTTPServer:
    """Base of a server object: start() binds 127.0.0.1:`port` (0: a free one) and serves `handler` in a thread.

    The handler reaches this object as `self.server.owner`; `url` is the base URL once started.
    """

    handler = None
    thread_name = 'loopback-http'

    def __init__(self, port=0):
        self.port = port
        self.url = None
        self._server = None
        self._thread = None

    def start(self):
        self._server = LoopbackServer(('127.0.0.1', self.port), self.handler)
        self._server.owner = self
        self.url = 'http://127.0.0.1:%d' % self._server.server_address[1]
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
