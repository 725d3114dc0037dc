"""Proxies from the environment, as curl reads them: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY.

The integration tests pull through a real forward proxy (tools/forwardproxy.py) that counts the CONNECT tunnels
and proxied requests it served, from real docker-registry instances, with the occystrap command.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from occystrap.errors import UsageError
from occystrap.registry.http import ConnectionFailed, HttpClient
from occystrap.registry.proxy import NoProxy, ProxyConfig, parse_proxy
from occystrap.settings import Settings
from tests.services import free_port, seed_image, skopeo_inspect
from tools.forwardproxy import ForwardProxy

PROXY_VARIABLES = ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY', 'no_proxy',
                   'NO_PROXY', 'REQUEST_METHOD')


def occystrap(*args, env=None):
    environ = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    environ.update(env or {})
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, env=environ,
                          timeout=120)


# --- reading the environment

@pytest.mark.parametrize('entries, host, port, exempt', [
    ('example.com', 'example.com', 443, True),
    ('example.com', 'r.example.com', 443, True),          # a name matches the names below it
    ('.example.com', 'r.example.com', 443, True),
    ('.example.com', 'example.com', 443, True),           # curl drops the leading dot
    ('*.example.com', 'a.b.example.com', 443, True),
    ('example.com', 'notexample.com', 443, False),
    ('example.com', 'example.com.evil.test', 443, False),
    ('EXAMPLE.com', 'Example.COM', 443, True),
    ('example.com:5000', 'example.com', 5000, True),      # host:port: that port only
    ('example.com:5000', 'example.com', 443, False),
    ('127.0.0.1', '127.0.0.1', 5000, True),
    ('127.0.0.1', '127.0.0.2', 5000, False),
    ('127.0.0.0/8', '127.3.4.5', 5000, True),
    ('10.0.0.0/8', '127.0.0.1', 5000, False),
    ('::1', '::1', 5000, True),
    ('[::1]:5000', '::1', 5000, True),
    ('[::1]:5000', '::1', 5001, False),
    ('fd00::/8', 'fd12::1', 443, True),
    ('*', 'anything.test', 1, True),
    ('a.test, b.test c.test', 'c.test', 443, True),         # commas and spaces both separate
    ('', '127.0.0.1', 5000, False),                       # loopback is not exempt unless listed, as in curl
    ('localhost', '127.0.0.1', 5000, False),              # names are not resolved
    ('host:notaport,[::1', 'host', 80, False),            # entries that name nothing are ignored
])
def test_no_proxy_matching(entries, host, port, exempt):
    assert NoProxy(entries).matches(host, port) is exempt


def test_variables_are_read_as_curl_reads_them():
    config = ProxyConfig({'http_proxy': 'http://lower:1', 'HTTP_PROXY': 'http://upper:2',
                          'HTTPS_PROXY': 'proxy.test:3128', 'NO_PROXY': 'registry.test'})
    assert config.for_scheme('http').url == 'http://lower:1' and config.for_scheme('http').variable == 'http_proxy'
    assert config.for_scheme('https').url == 'http://proxy.test:3128'     # no scheme: http, as in curl
    assert config.for_url('https://other.test/v2/').variable == 'HTTPS_PROXY'
    assert config.for_url('https://registry.test:5000/v2/') is None
    fallback = ProxyConfig({'ALL_PROXY': 'http://all:8080', 'https_proxy': ''})
    assert fallback.for_scheme('http').url == fallback.for_scheme('https').url == 'http://all:8080'
    assert ProxyConfig({}).for_url('https://r.test/') is None
    # Under CGI, HTTP_PROXY comes from a client's Proxy: header ("httpoxy"): it is not a proxy setting there.
    assert ProxyConfig({'HTTP_PROXY': 'http://attacker:1', 'REQUEST_METHOD': 'GET'}).for_scheme('http') is None


@pytest.mark.parametrize('value, fragment', [
    ('ftp://proxy.test:21', 'names a ftp proxy'),
    ('http://proxy.test:99999', 'is not a proxy URL'),
    ('http://user:s3cret@:3128', 'is not a proxy URL'),
    ('http://prox y.test:3128', 'spaces or control characters'),
    ('http://proxy.test:3128\n\x1b[31m', 'spaces or control characters'),
])
def test_malformed_proxies_are_usage_errors_that_name_the_variable(value, fragment):
    with pytest.raises(UsageError) as raised:
        parse_proxy(value, 'HTTPS_PROXY')
    message = str(raised.value)
    assert message.startswith('HTTPS_PROXY ') and fragment in message
    assert 's3cret' not in message and '\n' not in message and '\x1b' not in message


def test_socks_proxies_need_socksio():
    if importlib.util.find_spec('socksio') is None:
        with pytest.raises(UsageError, match='needs the Python package socksio'):
            parse_proxy('socks5://127.0.0.1:1080', 'ALL_PROXY')
    else:
        assert parse_proxy('socks5h://127.0.0.1:1080', 'ALL_PROXY').url == 'socks5h://127.0.0.1:1080'


def test_proxy_credentials_stay_out_of_what_is_shown():
    proxy = parse_proxy('http://user:s3cret@proxy.test:3128', 'HTTPS_PROXY')
    assert proxy.display == 'http://proxy.test:3128' and proxy.password == 's3cret'


def test_a_bad_proxy_variable_is_a_one_line_usage_error(registry):
    result = occystrap('--insecure', 'info', 'registry://%s/none:v1' % registry.host,
                       env={'HTTP_PROXY': 'gopher://user:s3cret@proxy.test:70'})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ['error: HTTP_PROXY names a gopher proxy; occystrap speaks to '
                                                  'http, https and socks5 proxies']


# --- through a real proxy

@pytest.fixture
def proxy():
    with ForwardProxy() as server:
        yield server


def _pull(source_registry, name, tmp_path, env, *options):
    out = tmp_path / 'image.tar'
    flags = ['--ca-cert', str(source_registry.ca_path)] if source_registry.tls else ['--insecure']
    result = occystrap(*flags, *options, 'process', 'registry://%s/%s:v1' % (source_registry.host, name),
                       'tar://%s' % out, env=env)
    return result, out


def _check_tarball(path, image):
    # skopeo reads the tarball independently of the code under test.
    config = skopeo_inspect('docker-archive:%s' % path, config=True)
    assert config['rootfs']['diff_ids'] == image.diff_ids


@pytest.mark.integration
def test_https_proxy_carries_a_tls_pull_through_connect(tls_registry, proxy, repo_name, oci_image, tmp_path):
    seed_image(tls_registry, repo_name, 'v1', oci_image.path)
    result, out = _pull(tls_registry, repo_name, tmp_path, {'HTTPS_PROXY': proxy.url}, '--http2')
    assert result.returncode == 0, result.stderr
    _check_tarball(out, oci_image)
    assert proxy.connects and set(proxy.connects) == {tls_registry.host}
    assert proxy.requests == []


@pytest.mark.integration
def test_no_proxy_match_goes_direct(tls_registry, proxy, repo_name, oci_image, tmp_path):
    seed_image(tls_registry, repo_name, 'v1', oci_image.path)
    for no_proxy in ('127.0.0.1', tls_registry.host, '127.0.0.0/8', '*'):
        result, out = _pull(tls_registry, repo_name, tmp_path, {'https_proxy': proxy.url, 'NO_PROXY': no_proxy})
        assert result.returncode == 0, (no_proxy, result.stderr)
        _check_tarball(out, oci_image)
    assert proxy.connects == [] and proxy.requests == []
    # A NO_PROXY entry for another port of the same host does not exempt this one.
    result, out = _pull(tls_registry, repo_name, tmp_path,
                        {'https_proxy': proxy.url, 'NO_PROXY': '127.0.0.1:%d' % free_port()})
    assert result.returncode == 0, result.stderr
    assert set(proxy.connects) == {tls_registry.host}


@pytest.mark.integration
def test_http_proxy_forwards_a_plain_http_pull(registry, proxy, repo_name, oci_image, tmp_path):
    seed_image(registry, repo_name, 'v1', oci_image.path)
    result, out = _pull(registry, repo_name, tmp_path, {'HTTP_PROXY': proxy.url})
    assert result.returncode == 0, result.stderr
    _check_tarball(out, oci_image)
    assert proxy.connects == []
    urls = [url for _, url in proxy.requests]
    prefix = 'http://%s/v2/%s/' % (registry.host, repo_name)
    assert all(url.startswith('http://%s/v2/' % registry.host) for url in urls), urls
    assert prefix + 'manifests/v1' in urls
    for digest in oci_image.layer_digests:
        assert ('GET', prefix + 'blobs/' + digest) in proxy.requests


@pytest.mark.integration
def test_proxy_credentials_are_sent_and_never_shown(tls_registry, repo_name, oci_image, tmp_path):
    seed_image(tls_registry, repo_name, 'v1', oci_image.path)
    with ForwardProxy(credentials=('puser', 'pw-s3cret')) as guarded:
        good = 'http://puser:pw-s3cret@%s' % guarded.address
        result, out = _pull(tls_registry, repo_name, tmp_path, {'HTTPS_PROXY': good}, '--verbose')
        assert result.returncode == 0, result.stderr
        _check_tarball(out, oci_image)
        assert guarded.connects and guarded.refused == 0
        assert 'pw-s3cret' not in result.stderr and 'through proxy %s' % guarded.url in result.stderr

        bad = 'http://puser:wrong-s3cret@%s' % guarded.address
        result, _ = _pull(tls_registry, repo_name, tmp_path, {'HTTPS_PROXY': bad}, '--verbose')
        assert result.returncode == 1
        assert guarded.refused == 1, 'a refusal of the credentials is not retried'
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith('error: cannot reach %s through proxy %s: ' % (tls_registry.host, guarded.url))
        assert '407' in last and 'wrong-s3cret' not in result.stderr


@pytest.mark.integration
def test_a_proxy_that_refuses_connections_fails_at_once(tls_registry, tmp_path):
    port = free_port()
    http = HttpClient(Settings(ca_cert=str(tls_registry.ca_path), retries=3),
                      environ={'HTTPS_PROXY': 'http://u:s3cret@127.0.0.1:%d' % port})
    with pytest.raises(ConnectionFailed) as raised:
        http.request('GET', 'https://%s/v2/' % tls_registry.host)
    assert str(raised.value) == ("cannot reach %s through proxy http://127.0.0.1:%d: connection refused (is the "
                                 "proxy's port right?)" % (tls_registry.host, port))
    assert http.retried == 0
    http.close()
