"""Userinfo and secret query values never reach an error line, a log line or the summary.

Passwords are generated (seeded, so a failure can be replayed) from unique markers joined by the characters that
cut URIs short or change their meaning; no marker may show up anywhere in the command's output.
"""

import http.server
import os
import random
import socket
import subprocess
import sys
import threading

import pytest

from occystrap.errors import UsageError
from occystrap.uris import parse_uri, redact

SEPARATORS = ['/', '@', ':', '?', '#', '%2F', '%40', '%3A', '%', '&', '=', ';', ',', '[', ']', '\\', "'", '"', ' ',
              '..', '//', '://', 'é', '密码', '\u202e', '\t', '*', '!', '$', '~', '+']


def markers(n, rng):
    return ['qz%s%02d' % (''.join(rng.choice('bcdfghjkmnprstvwx') for _ in range(3)), i) for i in range(n)]


def hostile_passwords(count, seed):
    """(password, its markers): markers are letters and digits only, so any leak of any piece shows as a marker."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        parts = markers(rng.randint(1, 4), rng)
        text = parts[0]
        for part in parts[1:]:
            text += ''.join(rng.choice(SEPARATORS) for _ in range(rng.randint(1, 3))) + part
        if rng.random() < 0.5:
            text = rng.choice(SEPARATORS) + text
        if rng.random() < 0.5:
            text += rng.choice(SEPARATORS)
        cases.append((text, parts))
    # The cases of the issue and their relatives, always tried.
    for text in ('qzpa01/qzss02', 'qzpa03@qzss04', 'qzpa05:qzss06', 'qzpa07?qzss08', 'qzpa09#qzss10',
                 'qzpa11%2Fqzss12', 'qzpa13ä/qzmi14密', 'qzpa15@qzho16/qzx17', '/qzpa18/', '@qzpa19@',
                 'qzpa20://qzss21'):
        cases.append((text, _split_markers(text)))
    return cases


def _split_markers(text):
    found, current = [], ''
    for ch in text:
        if ch.isascii() and ch.isalnum():
            current += ch
        else:
            if current.startswith('qz'):
                found.append(current)
            current = ''
    if current.startswith('qz'):
        found.append(current)
    return found


PASSWORDS = hostile_passwords(40, seed=20261201)


def occystrap(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith('OCCYSTRAP_')}
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, env=env,
                          timeout=60)


def assert_hidden(result, secrets):
    shown = result.stdout + result.stderr
    assert 'Traceback' not in shown, shown
    for secret in secrets:
        assert secret not in shown, (secret, shown)


def refused_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.parametrize('password,secrets', PASSWORDS)
def test_redact_hides_every_piece_of_any_password(password, secrets):
    for user in ('qzuser99', ''):
        userinfo = '%s:%s' % (user, password) if user else password
        for uri in ('registry://%s@127.0.0.1:5000/team/app:v1' % userinfo,
                    'registry://%s@[::1]/app@sha256:%s' % (userinfo, 'ab' * 32),
                    "error: bad tag in 'registry://%s@host/x:v!' (and more)" % userinfo,
                    'quay://org?api=https://%s@api.example/v1&token=qztok88' % userinfo):
            text = redact(uri)
            for secret in secrets + ['qztok88'] + ([user] if user else []):
                assert secret not in text, (uri, text)
            assert '***' in text


@pytest.mark.parametrize('password,secrets', PASSWORDS)
def test_a_parsed_uri_keeps_the_password_and_never_shows_it(password, secrets):
    try:
        uri = parse_uri('registry://qzuser99:%s@127.0.0.1:5000/team/app:v1' % password, 'input')
    except UsageError as e:
        message = str(e)
    else:
        assert (uri.username, uri.host, uri.name, uri.tag) == ('qzuser99', '127.0.0.1:5000', 'team/app', 'v1')
        assert uri.password == __import__('urllib.parse').parse.unquote(password)
        message = str(uri)
    for secret in secrets + ['qzuser99']:
        assert secret not in message


def bad_sources(password):
    return ['registry://qzuser99:%s@BAD HOST/x' % password,
            'registry://qzuser99:%s@127.0.0.1:5000/x:bad!tag' % password,
            'registry://qzuser99:%s@127.0.0.1:99999/x' % password,
            'registry://qzuser99:%s@127.0.0.1:5000/x?colour=red' % password,
            'registry://qzuser99:%s@127.0.0.1:5000/x?insecure=qzmaybe' % password,
            'qzuser99:%s@127.0.0.1:5000/x' % password,
            'quay://qzuser99:%s@org' % password]


@pytest.mark.parametrize('password,secrets', PASSWORDS)
def test_usage_errors_hide_the_password(password, secrets):
    for source in bad_sources(password):
        with pytest.raises(UsageError) as e:
            parse_uri(source, 'input')
        for secret in secrets + ['qzuser99']:
            assert secret not in str(e.value), (source, str(e.value))


@pytest.mark.parametrize('password,secrets', PASSWORDS[::8])
def test_usage_errors_of_the_real_command_hide_the_password(password, secrets, tmp_path):
    out = 'tar://%s' % (tmp_path / 'out.tar')
    for source in bad_sources(password):
        result = occystrap('process', source, out)
        assert result.returncode == 2, (source, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith('error: ')
        assert_hidden(result, secrets + ['qzuser99'])
        assert '***' in result.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize('password,secrets', PASSWORDS[1::10])
def test_runtime_errors_and_logs_hide_the_password(password, secrets, tmp_path):
    port = refused_port()
    source = 'registry://qzuser99:%s@127.0.0.1:%d/team/app:v1' % (password, port)
    for args in (['--verbose', '--retries', '0', 'info', source],
                 ['--verbose', '--retries', '0', '-O', 'json', 'process', source, 'tar://%s' % (tmp_path / 'o.tar')]):
        result = occystrap(*args)
        assert result.returncode == 1, result.stderr
        assert 'cannot reach 127.0.0.1:%d' % port in result.stderr
        assert_hidden(result, secrets + ['qzuser99'])


def test_secret_query_values_are_hidden_in_errors():
    result = occystrap('info', 'quay://org?token=qzsecret1&api=http://127.0.0.1:1/api&colour=red')
    assert result.returncode == 2 and "unknown option 'colour'" in result.stderr
    assert_hidden(result, ['qzsecret1'])
    assert redact('https://h/x?access_token=qza&X-Amz-Signature=qzb&password=qzc&page=2') == \
        'https://h/x?access_token=***&X-Amz-Signature=***&password=***&page=2'


def test_what_is_not_userinfo_is_left_alone():
    digest = 'sha256:' + '1' * 64
    for text in ('registry://127.0.0.1:5000/app@' + digest, 'docker://app@' + digest, 'tar:///tmp/a@b/c.tar',
                 'dir://relative@x/y', 'registry://host/team/app:v1'):
        assert redact(text) == text
    assert parse_uri('tar://rel@host/x.tar', 'output').path == 'rel@host/x.tar'


def test_per_image_errors_of_a_multi_image_run_are_redacted():
    from occystrap.errors import OccystrapError
    from occystrap.pipeline import ImageInput, ImageRef, RunContext, for_each_image

    class Failing(ImageInput):
        multi = True

        def references(self):
            return [ImageRef('a', 'v1'), ImageRef('b', 'v1')]

        def open(self, ref):
            raise OccystrapError('cannot pull from registry://qzuser99:qzpass98@127.0.0.1:1/%s' % ref.name)

    ctx = RunContext()
    try:
        source = Failing(parse_uri('tar:///tmp/x.tar', 'input'), ctx)
        results = for_each_image(source, source.open, ctx)
    finally:
        ctx.close()
    assert [r.ok for r in results] == [False, False]
    for r in results:
        assert 'qzpass98' not in r.error and 'qzuser99' not in r.error and 'registry://***@127.0.0.1:1/' in r.error


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """Answers every request 503, so that the client retries and logs each retry with the URL."""

    def do_GET(self):
        self.send_response(503)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def log_message(self, *args):
        pass


def test_userinfo_of_a_url_inside_an_option_stays_out_of_errors_and_retry_logs():
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        result = occystrap('--verbose', '--retries', '1', 'info',
                           'quay://org?api=http://qzapiuser:qzapi%%252Fpass@127.0.0.1:%d/api&token=qztok77' % port)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1 and 'answered 503' in result.stderr, result.stderr
    assert 'retry 1' in result.stderr and '127.0.0.1:%d' % port in result.stderr, result.stderr
    assert_hidden(result, ['qzapiuser', 'qzapi', 'pass@', 'qztok77'])
    port = refused_port()
    # Unencoded, the '/' ends the URL's authority early: one line, and still no piece of the password.
    result = occystrap('info', 'quay://org?api=http://qzapiuser:qzapi/pass@127.0.0.1:%d/api' % port)
    assert result.returncode == 1 and 'is not an http(s) URL' in result.stderr, result.stderr
    assert_hidden(result, ['qzapiuser', 'qzapi', 'pass@'])
