"""Hostile registries, through the real command: credentials never in clear text, bounded reads, the TLS mistake.

Every case puts tools/delayproxy.py's FaultProxy (terminating TLS where the case needs it) in front of a real
docker-registry, and runs `python -m occystrap` as a user would; peak memory is measured with tools/peakrss.py.
"""

import gzip
import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.services import build_oci_layout, seed_image, skopeo_inspect, write_tls_material
from tools.delayproxy import FaultProxy, answer, challenge, huge, raw, redirect
from tools.loopback import TLS_ALERT
from tools.quay_standin import QuayStandin

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
HUGE = 512 * 1024 * 1024            # far beyond every cap: reading it whole would take the process past 1 GB
MAX_RSS_KB = 200 * 1024


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    return build_oci_layout(tmp_path_factory.mktemp('hostile') / 'layout', layers=[
        {'etc/hello': b'hello\n'}, {'usr/share/data': os.urandom(100_000)}])


@pytest.fixture(scope='module')
def proxy_tls(tmp_path_factory):
    """A CA and a certificate for 127.0.0.1 and localhost, for a FaultProxy that terminates TLS."""
    return write_tls_material(tmp_path_factory.mktemp('proxy-tls'))


def occystrap(*args, tmp_path=None, env=None):
    """Run the real command; returns (exit status, stderr lines, peak RSS in KiB)."""
    out = (tmp_path or Path(os.environ.get('TMPDIR', '/tmp'))) / ('peakrss-%d.json' % os.getpid())
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'peakrss.py'), '--out', str(out), '--',
                             sys.executable, '-m', 'occystrap', *args],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    peak = json.loads(out.read_text())['peak_rss_kb']
    out.unlink()
    return result.returncode, result.stderr.splitlines(), peak


def error_line(lines):
    """The one error line; asserts there is exactly one and no traceback."""
    errors = [line for line in lines if line.startswith('error:')]
    assert len(errors) == 1 and not any('Traceback' in line for line in lines), lines
    return errors[0]


# ----------------------------------------------------------------------------------------------------------------
# Credentials over plain HTTP
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture
def basic_seeded(basic_auth_registry, repo_name, image):
    seed_image(basic_auth_registry, repo_name, 'v1', image.path)
    return repo_name


def tls_front(registry, proxy_tls, rules):
    """A FaultProxy serving HTTPS before a TLS registry, answering plain HTTP on the same port too."""
    return FaultProxy(registry.url, rules, tls=(proxy_tls['cert'], proxy_tls['key']), upstream_ca=registry.ca_path)


def credentials(registry):
    return ['--username', registry.username, '--password', registry.password]


def test_https_to_http_redirect_of_a_blob_is_refused_and_no_credentials_cross_in_clear(
        basic_auth_registry, basic_seeded, proxy_tls, image, tmp_path):
    rule = redirect(r'/blobs/sha256:', 'http://{netloc}{path}', scheme='https')
    with tls_front(basic_auth_registry, proxy_tls, [rule]) as proxy:
        status, lines, _ = occystrap('--ca-cert', str(proxy_tls['ca']), *credentials(basic_auth_registry),
                                     'process', 'registry://%s/%s:v1' % (proxy.netloc, basic_seeded),
                                     'tar://%s' % (tmp_path / 'out.tar'), tmp_path=tmp_path)
    assert status == 1
    line = error_line(lines)
    assert line.startswith('error: registry %s redirected blob sha256:' % proxy.netloc), line
    assert 'to plain HTTP; refusing to leave TLS' in line
    assert [r for r in proxy.received if r.scheme == 'http'] == [], 'nothing was sent over plain HTTP'
    # Credentials were in use on the TLS side: the refusal is not just a run that never authenticated.
    assert any('Authorization' in r.headers for r in proxy.received if r.scheme == 'https')
    assert sorted(os.listdir(tmp_path)) == []


def test_redirect_to_another_origin_carries_no_credentials(basic_auth_registry, basic_seeded, proxy_tls, tmp_path):
    # localhost:PORT is the same server under another name: another origin, so Authorization must stay behind.
    rule = redirect(r'/blobs/sha256:[0-9a-f]+$', 'https://localhost:{port}{path}?moved=1', scheme='https')
    with tls_front(basic_auth_registry, proxy_tls, [rule]) as proxy:
        status, lines, _ = occystrap('--ca-cert', str(proxy_tls['ca']), *credentials(basic_auth_registry),
                                     'process', 'registry://%s/%s:v1' % (proxy.netloc, basic_seeded),
                                     'tar://%s' % (tmp_path / 'out.tar'), tmp_path=tmp_path)
    moved = [r for r in proxy.received if 'moved=1' in r.path]
    assert moved, 'the redirect was followed'
    assert all(r.headers.get('Host', '').startswith('localhost:') for r in moved)
    assert not any('Authorization' in r.headers for r in moved)
    assert any('Authorization' in r.headers for r in proxy.received if 'moved=1' not in r.path)
    # The registry behind wants credentials for the blob, so the run fails, in one line.
    assert status == 1
    error_line(lines)
    assert os.listdir(tmp_path) == []


def test_plain_http_token_realm_of_a_tls_registry_is_refused(basic_auth_registry, basic_seeded, proxy_tls,
                                                             tmp_path):
    rule = challenge(r'^/v2/', 'Bearer realm="http://{netloc}/token",service="hostile"', scheme='https')
    with tls_front(basic_auth_registry, proxy_tls, [rule]) as proxy:
        status, lines, _ = occystrap('--ca-cert', str(proxy_tls['ca']), *credentials(basic_auth_registry),
                                     'info', 'registry://%s/%s:v1' % (proxy.netloc, basic_seeded), tmp_path=tmp_path)
    assert status == 1
    assert error_line(lines) == (
        'error: registry %s named a plain-HTTP token realm (%s); refusing to send credentials or ask for a token '
        'in clear text (use ?insecure=true on its URI only if this registry is meant to be reached over plain '
        'HTTP)' % (proxy.netloc, proxy.netloc))
    assert [r for r in proxy.received if r.scheme == 'http'] == []


@pytest.mark.parametrize('location, ending', [
    ('http://{netloc}/v2/elsewhere/blobs/uploads/1', 'to plain HTTP; refusing to leave TLS (use ?insecure=true on '
     'its URI only if this registry is meant to be reached over plain HTTP)'),
    ('ftp://{netloc}/v2/elsewhere/blobs/uploads/1', 'to an unusable URL (not http or https with a host)')])
def test_upload_location_of_a_tls_registry_is_checked_like_a_redirect(
        registry, tls_registry, plain_seeded, proxy_tls, location, ending, tmp_path):
    rule = answer(r'/blobs/uploads/$', 202, headers={'Location': location}, methods=('POST',), scheme='https')
    with tls_front(tls_registry, proxy_tls, [rule]) as proxy:
        status, lines, _ = occystrap('--ca-cert', str(proxy_tls['ca']), 'process',
                                     'registry://%s/%s:v1?insecure=true' % (registry.host, plain_seeded),
                                     'registry://%s/%s-moved:v1' % (proxy.netloc, plain_seeded), tmp_path=tmp_path)
    assert status == 1
    line = error_line(lines)
    assert line.startswith('error: registry %s moved the upload of blob sha256:' % proxy.netloc), line
    assert line.endswith(ending), line
    assert [r for r in proxy.received if r.scheme == 'http'] == []
    assert not [r for r in proxy.received if 'elsewhere' in r.path]


@pytest.mark.parametrize('realm', ['file:///etc/passwd', 'ftp://{netloc}/token', 'https:///token',
                                   'https://user:pw@{netloc}/token'])
def test_token_realm_must_be_an_http_url_with_a_host(registry, repo_name, image, realm, tmp_path):
    seed_image(registry, repo_name, 'v1', image.path)
    with FaultProxy(registry.url, [challenge(r'^/v2/', 'Bearer realm="%s"' % realm)]) as proxy:
        status, lines, _ = occystrap('--insecure', 'info', 'registry://%s/%s:v1' % (proxy.netloc, repo_name),
                                     tmp_path=tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: registry %s named a token realm that is not an http(s) URL with a host'
                                 % proxy.netloc)
    assert not any(r.path.startswith('/token') for r in proxy.received)


def test_plain_http_token_realm_is_used_when_the_registry_is_plain(registry, repo_name, image, tmp_path):
    # The user asked for plain HTTP to this registry, so its plain realm is not a downgrade: it is asked, and its
    # (here refused) answer decides.
    seed_image(registry, repo_name, 'v1', image.path)
    rules = [challenge(r'^/v2/', 'Bearer realm="http://{netloc}/token",service="plain"'),
             answer(r'^/token', 403, body=b'{}')]
    with FaultProxy(registry.url, rules) as proxy:
        status, lines, _ = occystrap('--insecure', 'info', 'registry://%s/%s:v1' % (proxy.netloc, repo_name),
                                     tmp_path=tmp_path)
    assert status == 1
    assert error_line(lines).startswith('error: token service of registry %s refused anonymous access' % proxy.netloc)
    assert any(r.path.startswith('/token?') for r in proxy.received)


def test_redirects_stop_after_five(registry, repo_name, image, tmp_path):
    seed_image(registry, repo_name, 'v1', image.path)
    with FaultProxy(registry.url, [redirect(r'/blobs/sha256:', '{path}')]) as proxy:
        status, lines, _ = occystrap('--insecure', 'process', 'registry://%s/%s:v1' % (proxy.netloc, repo_name),
                                     'tar://%s' % (tmp_path / 'out.tar'), tmp_path=tmp_path)
    assert status == 1
    line = error_line(lines)
    assert line.startswith('error: registry %s redirected blob sha256:' % proxy.netloc)
    assert line.endswith('more than 5 times')
    redirected = [r.path for r in proxy.received if '/blobs/' in r.path]
    assert len(redirected) == len(set(redirected)) * 6, 'each blob: the request and 5 redirects followed'
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('location', ['ftp://{netloc}{path}', 'http://user:pw@{netloc}{path}', 'https:///x',
                                      'javascript:alert(1)', 'http://[::1', 'http://{netloc}:99999/x'])
def test_redirect_to_an_unusable_url_is_refused(registry, repo_name, image, location, tmp_path):
    seed_image(registry, repo_name, 'v1', image.path)
    with FaultProxy(registry.url, [redirect(r'/blobs/sha256:', location)]) as proxy:
        status, lines, _ = occystrap('--insecure', 'process', 'registry://%s/%s:v1' % (proxy.netloc, repo_name),
                                     'tar://%s' % (tmp_path / 'out.tar'), tmp_path=tmp_path)
    assert status == 1
    line = error_line(lines)
    assert line.startswith('error: blob sha256:'), line
    assert line.endswith(' from registry %s was redirected to an unusable URL (not http or https with a host)'
                         % proxy.netloc), line
    assert len([r for r in proxy.received if '/blobs/' in r.path]) == len({r.path for r in proxy.received
                                                                          if '/blobs/' in r.path})


# ----------------------------------------------------------------------------------------------------------------
# Unbounded reads
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture
def plain_seeded(registry, repo_name, image):
    seed_image(registry, repo_name, 'v1', image.path)
    return repo_name


def info_through(proxy, name, tmp_path, *extra):
    return occystrap('--insecure', '--retries', '0', 'info', 'registry://%s/%s' % (proxy.netloc, name), *extra,
                     tmp_path=tmp_path)


@pytest.mark.parametrize('framing', ['length', 'chunked', 'close'])
def test_huge_manifest_is_refused_with_little_memory(registry, plain_seeded, framing, tmp_path):
    with FaultProxy(registry.url, [huge(r'/manifests/v1$', HUGE, framing=framing)]) as proxy:
        status, lines, peak = info_through(proxy, plain_seeded + ':v1', tmp_path)
    assert status == 1
    what = 'error: the manifest of %s:v1 from registry %s is ' % (plain_seeded, proxy.netloc)
    if framing == 'length':
        assert error_line(lines) == what + '%d bytes, more than the limit of 4 MiB' % HUGE
    else:
        assert error_line(lines) == what + 'larger than the limit of 4 MiB'
    assert peak < MAX_RSS_KB, 'peak RSS %d KiB' % peak


def test_compressed_manifest_that_inflates_past_the_limit_is_refused(registry, plain_seeded, tmp_path):
    # About a megabyte of gzip on the wire, a gigabyte once inflated.
    rule = huge(r'/manifests/v1$', 1024 * 1024 * 1024, encoding='gzip')
    with FaultProxy(registry.url, [rule]) as proxy:
        status, lines, peak = info_through(proxy, plain_seeded + ':v1', tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: the manifest of %s:v1 from registry %s is larger than the limit of 4 MiB'
                                 % (plain_seeded, proxy.netloc))
    assert peak < MAX_RSS_KB, 'peak RSS %d KiB' % peak


def test_gzip_manifest_within_the_limit_is_read(registry, plain_seeded, image, tmp_path):
    # The same decoding path accepts an honest compressed answer: the registry's own manifest, gzipped.
    manifest = (image.path / 'blobs' / 'sha256' / image.manifest_digest.split(':')[1]).read_bytes()
    rule = answer(r'/manifests/v1$', 200, headers={'Content-Type': image.manifest['mediaType'],
                                                   'Content-Encoding': 'gzip'}, body=gzip.compress(manifest))
    with FaultProxy(registry.url, [rule]) as proxy:
        result = subprocess.run([sys.executable, '-m', 'occystrap', '--insecure', 'info',
                                 'registry://%s/%s:v1' % (proxy.netloc, plain_seeded)],
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proxy.hits[rule.name] == 1
    assert result.returncode == 0, result.stderr
    assert image.manifest_digest in result.stdout


@pytest.mark.parametrize('framing', ['length', 'chunked'])
def test_huge_config_is_refused(registry, plain_seeded, image, framing, tmp_path):
    with FaultProxy(registry.url, [huge(r'/blobs/' + image.config_digest, HUGE, framing=framing)]) as proxy:
        status, lines, peak = info_through(proxy, plain_seeded + ':v1', tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: blob %s in %s on registry %s is larger than %d bytes'
                                 % (image.config_digest, plain_seeded, proxy.netloc, 64 * 1024 * 1024))
    assert peak < MAX_RSS_KB, 'peak RSS %d KiB' % peak


@pytest.mark.parametrize('framing', ['length', 'chunked'])
def test_huge_error_body_is_dropped_and_the_status_kept(registry, plain_seeded, framing, tmp_path):
    with FaultProxy(registry.url, [huge(r'/manifests/v1$', HUGE, status=404, framing=framing)]) as proxy:
        status, lines, peak = info_through(proxy, plain_seeded + ':v1', tmp_path)
    assert status == 1
    assert error_line(lines) == 'error: registry %s answered 404 for %s:v1' % (proxy.netloc, plain_seeded)
    assert peak < MAX_RSS_KB, 'peak RSS %d KiB' % peak


def test_garbage_error_body_drops_the_detail(registry, plain_seeded, tmp_path):
    body = b'[' * 100_000 + b'\x1b[31m'
    with FaultProxy(registry.url, [answer(r'/manifests/v1$', 500, body=body)]) as proxy:
        status, lines, _ = info_through(proxy, plain_seeded + ':v1', tmp_path)
    assert status == 1
    assert error_line(lines) == 'error: registry %s answered 500 for %s:v1' % (proxy.netloc, plain_seeded)


@pytest.mark.parametrize('framing', ['length', 'close'])
def test_huge_token_answer_is_refused(registry, plain_seeded, framing, tmp_path):
    rules = [challenge(r'^/v2/', 'Bearer realm="http://{netloc}/token",service="plain"'),
             huge(r'^/token', HUGE, framing=framing)]
    with FaultProxy(registry.url, rules) as proxy:
        status, lines, peak = info_through(proxy, plain_seeded + ':v1', tmp_path)
    assert status == 1
    assert error_line(lines).startswith('error: the token answer for registry %s is ' % proxy.netloc)
    assert error_line(lines).endswith('the limit of 64 KiB')
    assert peak < MAX_RSS_KB, 'peak RSS %d KiB' % peak


@pytest.mark.parametrize('token', [b'{"token": "abc\\r\\nX-Injected: 1"}', b'{"token": {"a": 1}}',
                                   b'{"token": "ok", "expires_in": 1' + b'0' * 400 + b'}', b'[' * 50_000])
def test_garbage_token_answer_is_one_line(registry, plain_seeded, token, tmp_path):
    rules = [challenge(r'^/v2/', 'Bearer realm="http://{netloc}/token",service="plain"'),
             answer(r'^/token', 200, headers={'Content-Type': 'application/json'}, body=token)]
    with FaultProxy(registry.url, rules) as proxy:
        status, lines, _ = info_through(proxy, plain_seeded + ':v1', tmp_path)
    line = error_line(lines)
    if b'expires_in' in token:
        # A usable token with an absurd lifetime: the token is sent, the (real) registry does not take it.
        assert status == 1 and 'token' not in line.split(':', 1)[0]
    else:
        assert status == 1
        assert line.startswith('error: token service of registry %s answered ' % proxy.netloc), line


def test_huge_catalog_page_is_refused(registry, plain_seeded, tmp_path):
    with FaultProxy(registry.url, [huge(r'/v2/_catalog', HUGE, framing='chunked')]) as proxy:
        status, lines, peak = info_through(proxy, 'test/*:v1', tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: the catalog from registry %s is larger than the limit of 8 MiB'
                                 % proxy.netloc)
    assert peak < MAX_RSS_KB, 'peak RSS %d KiB' % peak


def test_huge_tag_list_is_refused(registry, plain_seeded, tmp_path):
    # A tag glob reads the tag list (a catalog glob of one tag asks each repository with a HEAD instead).
    with FaultProxy(registry.url, [huge(r'/tags/list', HUGE)]) as proxy:
        status, lines, peak = info_through(proxy, plain_seeded + ':v*', tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: the tags of %s from registry %s is %d bytes, more than the limit of 8 MiB'
                                 % (plain_seeded, proxy.netloc, HUGE))
    assert peak < MAX_RSS_KB, 'peak RSS %d KiB' % peak


def test_tag_list_that_is_not_a_list_is_refused(registry, plain_seeded, tmp_path):
    body = json.dumps({'name': plain_seeded, 'tags': 'v1'}).encode()
    with FaultProxy(registry.url, [answer(r'/tags/list', 200, body=body)]) as proxy:
        status, lines, _ = info_through(proxy, plain_seeded + ':v*', tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: registry %s answered the tags of %s without a list of tags'
                                 % (proxy.netloc, plain_seeded))


def test_huge_quay_api_answer_is_refused(tmp_path):
    tags = {'v1': {'manifest_digest': 'sha256:' + 'ab' * 32, 'size': 10}}
    data = {'acme': {'app': {'description': '', 'tags': tags}}}
    with QuayStandin(data=data) as standin, FaultProxy(standin.url, [huge(r'/api/v1/repository', HUGE,
                                                                          framing='close')]) as proxy:
        status, lines, peak = occystrap('info', 'quay://acme/*:v1?api=%s/api/v1' % proxy.url, tmp_path=tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: the Quay API %s/api/v1 answer for the repositories of acme is larger than '
                                 'the limit of 8 MiB' % proxy.url)
    assert peak < MAX_RSS_KB, 'peak RSS %d KiB' % peak


# ----------------------------------------------------------------------------------------------------------------
# --insecure against a TLS registry
# ----------------------------------------------------------------------------------------------------------------

GLOBAL_HINT = ('--insecure asks every registry for plain HTTP: leave it out, and put ?insecure=true only on the URI '
               'of a registry that needs plain HTTP')
URI_HINT = 'leave ?insecure=true off its URI'


@pytest.fixture
def tls_seeded(tls_registry, repo_name, image):
    seed_image(tls_registry, repo_name, 'v1', image.path)
    return repo_name


def test_insecure_info_against_a_tls_registry_says_it_speaks_tls(tls_registry, tls_seeded, tmp_path):
    status, lines, _ = occystrap('--insecure', 'info', 'registry://%s/%s:v1' % (tls_registry.host, tls_seeded),
                                 tmp_path=tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: registry %s speaks TLS (HTTPS) and refused %s:v1 over plain HTTP; %s'
                                 % (tls_registry.host, tls_seeded, GLOBAL_HINT))


def test_insecure_pull_from_a_tls_registry_says_it_speaks_tls(tls_registry, tls_seeded, tmp_path):
    destination = tmp_path / 'out'
    destination.mkdir()
    status, lines, _ = occystrap('--insecure', 'process', 'registry://%s/%s:v1' % (tls_registry.host, tls_seeded),
                                 'tar://%s' % (destination / 'image.tar'), tmp_path=tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: registry %s speaks TLS (HTTPS) and refused %s:v1 over plain HTTP; %s'
                                 % (tls_registry.host, tls_seeded, GLOBAL_HINT))
    assert os.listdir(destination) == []


def test_insecure_push_to_a_tls_registry_says_it_speaks_tls_and_the_hint_works(
        registry, tls_registry, plain_seeded, image, tmp_path):
    source = 'registry://%s/%s:v1' % (registry.host, plain_seeded)
    target = 'registry://%s/%s-copy:v1' % (tls_registry.host, plain_seeded)
    status, lines, _ = occystrap('--insecure', 'process', source, target, tmp_path=tmp_path)
    assert status == 1
    line = error_line(lines)
    # The first request to the TLS registry is a HEAD (of the destination tag, to skip an image already there): no
    # body to read, so the registry's TLS is found by a handshake.
    assert line.startswith('error: registry %s speaks TLS (HTTPS) and refused %s-copy:v1 '
                           % (tls_registry.host, plain_seeded)), line
    assert line.endswith('over plain HTTP; ' + GLOBAL_HINT)
    # Doing as it says: plain HTTP for the source only, TLS (with its CA) for the destination.
    status, lines, _ = occystrap('--ca-cert', str(tls_registry.ca_path), 'process', source + '?insecure=true',
                                 target, tmp_path=tmp_path)
    assert status == 0, lines
    pushed = skopeo_inspect('docker://%s/%s-copy:v1' % (tls_registry.host, plain_seeded), raw=True, parse=False)
    assert json.loads(pushed)['layers'] == image.manifest['layers']


def test_insecure_option_on_a_tls_uri_says_to_leave_it_off(tls_registry, tls_seeded, tmp_path):
    status, lines, _ = occystrap('--ca-cert', str(tls_registry.ca_path), 'info',
                                 'registry://%s/%s:v1?insecure=true' % (tls_registry.host, tls_seeded),
                                 tmp_path=tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: registry %s speaks TLS (HTTPS) and refused %s:v1 over plain HTTP; %s'
                                 % (tls_registry.host, tls_seeded, URI_HINT))


def test_tls_server_answering_plain_http_with_an_alert_says_it_speaks_tls(tls_registry, tls_seeded, proxy_tls,
                                                                          tmp_path):
    with FaultProxy(tls_registry.url, [], tls=(proxy_tls['cert'], proxy_tls['key']), plain='alert',
                    upstream_ca=tls_registry.ca_path) as proxy:
        status, lines, _ = occystrap('--insecure', '--retries', '0', 'info',
                                     'registry://%s/%s:v1' % (proxy.netloc, tls_seeded), tmp_path=tmp_path)
        assert status == 1
        # No answer to read here: the protocol broke, and a TLS handshake with the port succeeded.
        assert error_line(lines) == ('error: registry %s speaks TLS (HTTPS) and refused the manifest of %s:v1 over '
                                     'plain HTTP; %s' % (proxy.netloc, tls_seeded, GLOBAL_HINT))
        # The same proxy over TLS serves the image: the hint is right.
        status, lines, _ = occystrap('--ca-cert', str(proxy_tls['ca']), 'info',
                                     'registry://%s/%s:v1' % (proxy.netloc, tls_seeded), tmp_path=tmp_path)
        assert status == 0, lines


def test_garbage_from_a_plain_server_is_not_called_tls(registry, plain_seeded, tmp_path):
    # TLS alert bytes from a server that does not speak TLS: a protocol error, without the TLS hint.
    with FaultProxy(registry.url, [raw(r'/manifests/', TLS_ALERT)]) as proxy:
        status, lines, _ = info_through(proxy, plain_seeded + ':v1', tmp_path)
    assert status == 1
    line = error_line(lines)
    assert line.startswith('error: cannot reach %s: RemoteProtocolError' % proxy.netloc), line
    assert 'speaks TLS' not in line


def test_tls_to_a_plain_registry_keeps_its_hint(registry, plain_seeded, tmp_path):
    status, lines, _ = occystrap('info', 'registry://%s/%s:v1' % (registry.host, plain_seeded), tmp_path=tmp_path)
    assert status == 1
    line = error_line(lines)
    assert line.startswith('error: cannot reach %s: TLS handshake failed' % registry.host)
    assert line.endswith('is it a plain HTTP registry? then use --insecure')


# ----------------------------------------------------------------------------------------------------------------
# A hostile engine: the Docker API socket answering huge bodies (a real engine cannot be made to)
# ----------------------------------------------------------------------------------------------------------------

class _EngineHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, fmt, *args):
        pass

    def address_string(self):
        return 'unix'

    def do_GET(self):
        self._answer()

    def do_POST(self):
        length = int(self.headers.get('Content-Length') or 0)
        while length:
            length -= len(self.rfile.read(min(length, 1 << 20)))
        self._answer()

    def _answer(self):
        status, size = self.server.answers.get(self.path.split('?')[0], (404, 0))
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Transfer-Encoding', 'chunked')
        self.end_headers()
        block = b'[' * 65536
        try:
            for _ in range(size // len(block)):
                self.wfile.write(b'%x\r\n%s\r\n' % (len(block), block))
            self.wfile.write(b'0\r\n\r\n')
        except OSError:
            self.close_connection = True


@pytest.fixture
def hostile_engine(tmp_path):
    """A Docker API socket whose answers are {path: (status, body size)}, served chunked."""
    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
    path = str(tmp_path / 'engine.sock')
    server = Server(path, _EngineHandler)
    server.answers = {}
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server, path
    server.shutdown()
    server.server_close()


def test_huge_engine_answer_to_a_ping_is_refused(registry, plain_seeded, hostile_engine, tmp_path):
    server, path = hostile_engine
    server.answers['/_ping'] = (200, HUGE)
    status, lines, peak = occystrap('--insecure', 'process', 'registry://%s/%s:v1' % (registry.host, plain_seeded),
                                    'docker://hostile:v1?socket=%s' % path, tmp_path=tmp_path)
    assert status == 1
    assert error_line(lines) == ('error: the answer of the engine at %s to GET /_ping is larger than the limit of '
                                 '16 MiB' % path)
    assert peak < MAX_RSS_KB, 'peak RSS %d KiB' % peak


def test_huge_engine_error_body_is_dropped(hostile_engine, tmp_path):
    server, path = hostile_engine
    server.answers['/images/hostile:v1/get'] = (500, HUGE)
    status, lines, peak = occystrap('info', 'docker://hostile:v1?socket=%s' % path, tmp_path=tmp_path)
    assert status == 1
    assert error_line(lines) == 'error: engine at %s answered 500: Internal Server Error' % path
    assert peak < MAX_RSS_KB, 'peak RSS %d KiB' % peak
