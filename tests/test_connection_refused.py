"""A refused connection fails at once where nothing ever answered, and is retried where something did."""

import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

from occystrap.registry.client import RegistryClient
from occystrap.registry.http import ConnectionFailed, HttpClient
from occystrap.settings import Settings
from tests.services import free_port
from tools.loopback import BackgroundHTTPServer


def _client(retries=3, **kwargs):
    http_client = HttpClient(Settings(retries=retries, insecure=True, **kwargs), environ={})
    http_client.slept = []
    http_client.retry._sleep = http_client.slept.append
    return http_client


def test_a_closed_port_fails_without_retries():
    port = free_port()
    http_client = _client(retries=3)
    with pytest.raises(ConnectionFailed) as raised:
        http_client.request('GET', 'http://127.0.0.1:%d/v2/' % port)
    assert str(raised.value) == 'cannot reach 127.0.0.1:%d: connection refused (is the port right?)' % port
    assert http_client.retried == 0 and http_client.slept == []
    http_client.close()


def test_the_command_says_so_in_one_line_and_exits_1():
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if 'proxy' not in k.lower()}
    result = subprocess.run([sys.executable, '-m', 'occystrap', '--verbose', '--retries', '5', '--insecure', 'info',
                             'registry://127.0.0.1:%d/library/app:v1' % port], capture_output=True, text=True,
                            env=environ, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == 'error: cannot reach 127.0.0.1:%d: connection refused (is the port right?)' % port
    assert not [line for line in lines if 'retry' in line], result.stderr


class _Answering(BackgroundHTTPServer):
    """Answers every request 200 with '{}'; can be stopped and started again on the same port."""

    class handler(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header('Content-Length', '2')
            self.send_header('Connection', 'close')   # so that a stop refuses the next request
            self.end_headers()
            self.wfile.write(b'{}')


def test_a_server_that_answered_before_is_retried_until_it_is_back():
    server = _Answering().start()
    port = int(server.url.rsplit(':', 1)[1])
    http_client = _client(retries=3)
    url = 'http://127.0.0.1:%d/v2/' % port
    assert http_client.request('GET', url).status_code == 200
    server.stop()                      # a registry restarting: refused for a moment

    def restart_on_second_wait(seconds):
        http_client.slept.append(seconds)
        if len(http_client.slept) == 2:
            server.port = port
            server.start()
    http_client.retry._sleep = restart_on_second_wait
    try:
        assert http_client.request('GET', url).status_code == 200
        assert http_client.retried == 2
    finally:
        server.stop()
        http_client.close()


@pytest.mark.integration
def test_a_stopped_registry_that_answered_is_retried(fresh_registry):
    http_client = _client(retries=2)
    client = RegistryClient(http_client, fresh_registry.host, insecure=True)
    assert client.ping()
    fresh_registry.stop()
    with pytest.raises(ConnectionFailed) as raised:
        client.ping()
    message = str(raised.value)
    assert message.startswith('cannot reach %s: ' % fresh_registry.host) and message.endswith('(after 2 retries)')
    assert 'is the port right' not in message
    assert http_client.retried == 2 and len(http_client.slept) == 2
    http_client.close()


def test_other_transport_errors_are_still_retried():
    # A server that accepts and closes at once: not a refusal, so the usual retries apply.
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(16)
    port = listener.getsockname()[1]

    def accept_and_close():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()
    threading.Thread(target=accept_and_close, daemon=True).start()
    http_client = _client(retries=2)
    try:
        with pytest.raises(ConnectionFailed) as raised:
            http_client.request('GET', 'http://127.0.0.1:%d/v2/' % port)
        assert str(raised.value).endswith('(after 2 retries)') and http_client.retried == 2
    finally:
        listener.close()
        http_client.close()
