"""Credential sources (issue 13): auth.json, Docker config files, credential helpers, identity tokens,
--password-stdin and per-side credentials, each against a real registry; errors name where we looked, never what.

Every command runs as a child process with a HOME of its own and no proxy variables, so nothing the machine's
user has stored takes part.
"""

import base64
import json
import os
import stat
import subprocess
import sys

import pytest

from occystrap.registry import credentials
from tests.services import PassStore, Registry, seed_image, skopeo_inspect, write_tls_material

pytestmark = pytest.mark.integration

PROXY_VARIABLES = ('http_proxy', 'https_proxy', 'all_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY',
                   'NO_PROXY')


def b64(text):
    return base64.b64encode(text.encode()).decode()


def clean_env(home, **extra):
    """An environment with only `home` as the user's files: no XDG_*, DOCKER_CONFIG, REGISTRY_AUTH_FILE, proxies."""
    env = {k: v for k, v in os.environ.items()
           if k not in PROXY_VARIABLES and not k.startswith(('XDG_', 'OCCYSTRAP_'))
           and k not in ('DOCKER_CONFIG', 'REGISTRY_AUTH_FILE', 'GNUPGHOME', 'PASSWORD_STORE_DIR')}
    home.mkdir(parents=True, exist_ok=True)
    env['HOME'] = str(home)
    env['OCCYSTRAP_CERTS_D'] = ''     # no certs.d of the machine
    env.update({k: str(v) for k, v in extra.items()})
    return env


def occystrap(*args, env, stdin=None):
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=120)


def write_json(path, document):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    assert 'Traceback' not in result.stderr
    return lines[0]


@pytest.fixture(scope='module')
def private(basic_auth_registry, tmp_path_factory):
    """The session's htpasswd TLS registry with an image seeded in two namespaces."""
    from tests.services import build_oci_layout
    image = build_oci_layout(tmp_path_factory.mktemp('creds-image') / 'oci', layers=[{'etc/creds': b'secret\n'}])
    seed_image(basic_auth_registry, 'team/app', 'v1', image.path)
    seed_image(basic_auth_registry, 'other/app', 'v1', image.path)
    return basic_auth_registry, image


def info(reg, repo, env, *extra, stdin=None):
    return occystrap('--ca-cert', str(reg.ca_path), *extra, 'info', 'registry://%s/%s:v1' % (reg.host, repo),
                     env=env, stdin=stdin)


def test_podman_auth_json_namespace_keys_match_most_specific_first(private, tmp_path):
    reg, image = private
    auth = write_json(tmp_path / 'run' / 'containers' / 'auth.json', {'auths': {
        '%s/team' % reg.host: {'auth': b64('%s:%s' % (reg.username, reg.password))},
        reg.host: {'auth': b64('%s:WrongForTheRest' % reg.username)}}})
    env = clean_env(tmp_path / 'home', XDG_RUNTIME_DIR=auth.parent.parent)
    ok = info(reg, 'team/app', env)
    assert ok.returncode == 0, ok.stderr
    assert image.manifest_digest in ok.stdout
    refused = info(reg, 'other/app', env)
    assert refused.returncode == 1
    line = one_error_line(refused)
    assert 'refused the credentials' in line and 'WrongForTheRest' not in refused.stderr


def test_authfile_and_registry_auth_file_come_before_the_other_files(private, tmp_path):
    reg, image = private
    good = {'auths': {reg.host: {'auth': b64('%s:%s' % (reg.username, reg.password))}}}
    bad = {'auths': {reg.host: {'auth': b64('%s:NotIt' % reg.username)}}}
    home = tmp_path / 'home'
    write_json(home / '.config' / 'containers' / 'auth.json', bad)
    write_json(home / '.docker' / 'config.json', bad)
    authfile = write_json(tmp_path / 'mine.json', good)
    env = clean_env(home)
    assert info(reg, 'team/app', env).returncode == 1
    assert info(reg, 'team/app', env, '--authfile', str(authfile)).returncode == 0
    assert info(reg, 'team/app', dict(env, REGISTRY_AUTH_FILE=str(authfile))).returncode == 0
    # --authfile wins over REGISTRY_AUTH_FILE.
    wrong = write_json(tmp_path / 'wrong.json', bad)
    assert info(reg, 'team/app', dict(env, REGISTRY_AUTH_FILE=str(wrong)), '--authfile', str(authfile)).returncode == 0
    # An absent REGISTRY_AUTH_FILE is skipped (said so when credentials are missing), an absent --authfile refused.
    (home / '.config' / 'containers' / 'auth.json').unlink()
    write_json(home / '.docker' / 'config.json', good)
    assert info(reg, 'team/app', dict(env, REGISTRY_AUTH_FILE=str(tmp_path / 'none.json'))).returncode == 0
    missing = info(reg, 'team/app', env, '--authfile', str(tmp_path / 'none.json'))
    assert missing.returncode == 2 and 'none.json' in one_error_line(missing)


def test_docker_config_creds_store_with_the_real_pass_helper(private, tmp_path):
    reg, image = private
    with PassStore(tmp_path / 'pass') as store:
        store.store(reg.host, reg.username, reg.password)
        home = tmp_path / 'home'
        write_json(home / '.docker' / 'config.json', {'auths': {reg.host: {}}, 'credsStore': 'pass'})
        env = clean_env(home, GNUPGHOME=store.gnupg_home, PASSWORD_STORE_DIR=store.store_dir)
        result = info(reg, 'team/app', env, '--debug')
        assert result.returncode == 0, result.stderr
        assert image.manifest_digest in result.stdout
        assert reg.password not in result.stderr and reg.password not in result.stdout
        # An empty store: the helper has nothing, and the error says it was asked.
        other = clean_env(home, GNUPGHOME=store.gnupg_home, PASSWORD_STORE_DIR=tmp_path / 'empty-store')
        refused = info(reg, 'team/app', other)
        line = one_error_line(refused)
        assert refused.returncode == 1
        assert 'requires credentials' in line and 'helper docker-credential-pass' in line


def write_helper(directory, name, body):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ('docker-credential-' + name)
    path.write_text('#!/bin/sh\n' + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_cred_helpers_entry_runs_its_helper_with_the_server_on_stdin(private, tmp_path):
    reg, image = private
    bin_dir = tmp_path / 'bin'
    asked = tmp_path / 'asked'
    answer = json.dumps({'ServerURL': reg.host, 'Username': reg.username, 'Secret': reg.password})
    write_helper(bin_dir, 'occytest', '[ "$1" = get ] || exit 3\ncat > %s\necho \'%s\'\n' % (asked, answer))
    home = tmp_path / 'home'
    # credHelpers for this host wins over the auths entry and the credsStore of the same file.
    write_json(home / '.docker' / 'config.json', {
        'credHelpers': {reg.host: 'occytest'}, 'credsStore': 'absent-store',
        'auths': {reg.host: {'auth': b64('%s:Wrong' % reg.username)}}})
    env = clean_env(home, PATH='%s:%s' % (bin_dir, os.environ['PATH']))
    result = info(reg, 'team/app', env)
    assert result.returncode == 0, result.stderr
    assert asked.read_text() == reg.host


def test_a_failing_or_missing_helper_is_one_line_without_its_output(private, tmp_path):
    reg, image = private
    bin_dir = tmp_path / 'bin'
    write_helper(bin_dir, 'broken', 'echo "token LeakedHelperSecret for $(cat)" >&2\necho LeakedToo\nexit 1\n')
    home = tmp_path / 'home'
    env = clean_env(home, PATH='%s:%s' % (bin_dir, os.environ['PATH']))
    write_json(home / '.docker' / 'config.json', {'credHelpers': {reg.host: 'broken'}})
    broken = info(reg, 'team/app', env)
    line = one_error_line(broken)
    assert broken.returncode == 1
    assert 'docker-credential-broken' in line and 'exit status 1' in line
    assert 'Leaked' not in broken.stderr
    write_json(home / '.docker' / 'config.json', {'credsStore': 'nosuchhelper'})
    missing = info(reg, 'team/app', env)
    assert missing.returncode == 1
    assert 'docker-credential-nosuchhelper' in one_error_line(missing) and 'not installed' in missing.stderr
    # A hostile helper name never reaches a path: it is refused before anything runs.
    write_json(home / '.docker' / 'config.json', {'credsStore': '../../../bin/sh'})
    hostile = info(reg, 'team/app', env)
    assert hostile.returncode == 1 and 'is not a valid name' in one_error_line(hostile)


def test_unreadable_credential_file_is_one_line(private, tmp_path):
    reg, _ = private
    home = tmp_path / 'home'
    (home / '.docker').mkdir(parents=True)
    (home / '.docker' / 'config.json').write_text('{"auths": {"x": ')
    result = info(reg, 'team/app', clean_env(home))
    assert result.returncode == 1
    assert 'config.json is not JSON' in one_error_line(result)


def test_requires_credentials_names_the_sources_tried_not_their_contents(private, tmp_path):
    reg, _ = private
    home = tmp_path / 'home'
    write_json(home / '.docker' / 'config.json', {'auths': {'elsewhere.example': {'auth': b64('u:NeverShowThis')}}})
    env = clean_env(home, XDG_RUNTIME_DIR=tmp_path / 'run')
    result = info(reg, 'team/app', env)
    line = one_error_line(result)
    assert result.returncode == 1
    assert line.startswith('error: registry %s requires credentials' % reg.host)
    for path in (tmp_path / 'run' / 'containers' / 'auth.json', home / '.config' / 'containers' / 'auth.json'):
        assert '%s (absent)' % path in line
    assert str(home / '.docker' / 'config.json') in line
    assert 'NeverShowThis' not in result.stderr


def test_identity_token_gets_tokens_by_the_refresh_grant(token_registry, oci_image, repo_name, tmp_path):
    reg = token_registry
    seed_image(reg, repo_name, 'v1', oci_image.path)
    reg.token_server.reset()
    identity = reg.token_server.issue_refresh_token(reg.username)
    home = tmp_path / 'home'
    write_json(home / '.docker' / 'config.json', {'auths': {'http://%s' % reg.host: {'identitytoken': identity}}})
    result = occystrap('info', 'registry://%s/%s:v1?insecure=true' % (reg.host, repo_name), env=clean_env(home))
    assert result.returncode == 0, result.stderr
    assert oci_image.manifest_digest in result.stdout
    requests = reg.token_server.requests
    assert requests and all(r.method == 'POST' and r.user == reg.username and r.status == 200 for r in requests)
    form = reg.token_server.refresh_requests[0]
    assert form['grant_type'] == ['refresh_token'] and form['client_id'] == ['occystrap']
    assert form['scope'] == ['repository:%s:pull' % repo_name] and form['service'] == [reg.token_server.service]
    # A revoked identity token: a one-line refusal that does not repeat the token.
    write_json(home / '.docker' / 'config.json', {'auths': {reg.host: {'identitytoken': 'RevokedIdentityToken'}}})
    refused = occystrap('info', 'registry://%s/%s:v1?insecure=true' % (reg.host, repo_name), env=clean_env(home))
    line = one_error_line(refused)
    assert refused.returncode == 1 and 'refused the identity token' in line
    assert 'RevokedIdentityToken' not in refused.stderr


def test_password_stdin(private, tmp_path):
    reg, image = private
    env = clean_env(tmp_path / 'home')
    result = info(reg, 'team/app', env, '--username', reg.username, '--password-stdin', stdin=reg.password + '\n')
    assert result.returncode == 0, result.stderr
    assert image.manifest_digest in result.stdout
    wrong = info(reg, 'team/app', env, '--username', reg.username, '--password-stdin', stdin='NotThis\n')
    assert wrong.returncode == 1 and 'NotThis' not in wrong.stderr
    alone = info(reg, 'team/app', env, '--password-stdin', stdin='x\n')
    assert alone.returncode == 2 and '--password-stdin needs --username' in one_error_line(alone)


@pytest.fixture(scope='module')
def two_private(tmp_path_factory):
    """Two htpasswd TLS registries with different users, sharing one CA."""
    work = tmp_path_factory.mktemp('two-private')
    tls = write_tls_material(work / 'tls')
    with Registry(work / 'a', tls=tls, auth='basic', users={'alice': 'alice-pw'}, name='a') as a, \
            Registry(work / 'b', tls=tls, auth='basic', users={'bob': 'bob-pw'}, name='b') as b:
        yield a, b, tls['ca']


def test_src_and_dest_creds_copy_between_two_private_registries(two_private, oci_image, tmp_path):
    a, b, ca = two_private
    seed_image(a, 'src/app', 'v1', oci_image.path)
    env = clean_env(tmp_path / 'home')
    copy = occystrap('--ca-cert', str(ca), '--src-creds', 'alice:alice-pw', '--dest-creds', 'bob:bob-pw', 'process',
                     'registry://%s/src/app:v1' % a.host, 'registry://%s/dst/app:v1' % b.host, env=env)
    assert copy.returncode == 0, copy.stderr
    assert skopeo_inspect('docker://%s/dst/app:v1' % b.host, raw=True, parse=False) == \
        skopeo_inspect('docker://%s/src/app:v1' % a.host, raw=True, parse=False)
    # The destination's password from stdin, the source's in its URI (which wins over --src-creds).
    again = occystrap('--ca-cert', str(ca), '--src-creds', 'alice:wrong', '--dest-creds', 'bob', '--password-stdin',
                      'process', 'registry://alice:alice-pw@%s/src/app:v1' % a.host,
                      'registry://%s/dst/app:v2' % b.host, env=env, stdin='bob-pw\n')
    assert again.returncode == 0, again.stderr
    assert skopeo_inspect('docker://%s/dst/app:v2' % b.host)['Digest'] == oci_image.manifest_digest
    # One side's credentials do not go to the other registry.
    one_sided = occystrap('--ca-cert', str(ca), '--src-creds', 'alice:alice-pw', 'process',
                          'registry://%s/src/app:v1' % a.host, 'registry://%s/dst/app:v3' % b.host, env=env)
    assert one_sided.returncode == 1
    assert 'registry %s requires credentials' % b.host in one_sided.stderr and 'alice-pw' not in one_sided.stderr


@pytest.mark.parametrize('args,fragment', [
    (['--src-creds', 'alice'], '--src-creds alice has no password'),
    (['--dest-creds', ':pw'], '--dest-creds needs USER[:PASSWORD]'),
    (['--password', 'x', '--username', 'u', '--password-stdin'], 'cannot be used together'),
])
def test_credential_option_mistakes_are_usage_errors(args, fragment, tmp_path):
    result = occystrap(*args, 'info', 'registry://127.0.0.1:9/x/y:v1', env=clean_env(tmp_path / 'home'), stdin='')
    assert result.returncode == 2
    assert fragment in one_error_line(result)


def test_global_insecure_against_a_tls_registry_hints_at_the_per_uri_form(tls_registry, tmp_path):
    result = occystrap('--insecure', 'info', 'registry://%s/x/y:v1' % tls_registry.host,
                       env=clean_env(tmp_path / 'home'))
    assert result.returncode == 1
    line = one_error_line(result)
    assert 'speaks TLS' in line and '?insecure=true' in line


def test_key_normalisation_follows_docker_and_containers():
    assert credentials.normalize_key('https://Reg.Example:5000/v1/') == 'reg.example:5000'
    assert credentials.normalize_key('http://reg.example') == 'reg.example'
    assert credentials.normalize_key('index.docker.io') == 'docker.io'
    assert credentials.normalize_key('reg.example/ns/repo') == 'reg.example/ns/repo'
    assert credentials.lookup_keys('reg.example:5000', 'ns/sub/repo') == [
        'reg.example:5000/ns/sub/repo', 'reg.example:5000/ns/sub', 'reg.example:5000/ns', 'reg.example:5000']
    # A glob only matches the literal namespace before it.
    assert credentials.lookup_keys('reg.example', 'ns/app*') == ['reg.example/ns', 'reg.example']
    assert credentials.helper_server_url('registry-1.docker.io') == 'https://index.docker.io/v1/'


def test_helpers_run_only_when_a_registry_asks(registry, oci_image, repo_name, tmp_path):
    seed_image(registry, repo_name, 'v1', oci_image.path)
    home = tmp_path / 'home'
    # A helper that is not installed is no error while no registry wants credentials.
    write_json(home / '.docker' / 'config.json', {'credsStore': 'nosuchhelper'})
    result = occystrap('info', 'registry://%s/%s:v1?insecure=true' % (registry.host, repo_name), env=clean_env(home))
    assert result.returncode == 0, result.stderr
    assert oci_image.manifest_digest in result.stdout


def test_an_identity_token_cannot_answer_a_basic_challenge(private, tmp_path):
    reg, _ = private
    home = tmp_path / 'home'
    write_json(home / '.docker' / 'config.json', {'auths': {reg.host: {'identitytoken': 'SomeRefreshToken'}}})
    result = info(reg, 'team/app', clean_env(home))
    line = one_error_line(result)
    assert result.returncode == 1 and 'is an identity token' in line
    assert 'SomeRefreshToken' not in result.stderr


# --- docker's legacy ~/.dockercfg -------------------------------------------------------------------------------

def test_legacy_dockercfg_is_read_after_config_json(private, tmp_path):
    """~/.dockercfg is what docker wrote before config.json: server -> {auth, email}, no `auths` around it."""
    reg, image = private
    home = tmp_path / 'home'
    legacy = write_json(home / '.dockercfg', {'https://%s' % reg.host: {
        'auth': b64('%s:%s' % (reg.username, reg.password)), 'email': 'someone@example.invalid'}})
    result = info(reg, 'team/app', clean_env(home))
    assert result.returncode == 0, result.stderr
    assert image.manifest_digest in result.stdout
    # It comes after ~/.docker/config.json: an entry there wins (here a wrong one, refused by the registry).
    wrong = b64('%s:FromConfigJson' % reg.username)
    write_json(home / '.docker' / 'config.json', {'auths': {reg.host: {'auth': wrong}}})
    refused = info(reg, 'team/app', clean_env(home))
    assert refused.returncode == 1 and 'refused the credentials' in one_error_line(refused)
    assert 'FromConfigJson' not in refused.stderr
    # A config.json without an entry for the host leaves it to ~/.dockercfg; DOCKER_CONFIG does not move it.
    write_json(home / '.docker' / 'config.json', {'auths': {'elsewhere.example': {'auth': b64('u:p')}}})
    assert info(reg, 'team/app', clean_env(home)).returncode == 0
    assert info(reg, 'team/app', clean_env(home, DOCKER_CONFIG=tmp_path / 'nowhere')).returncode == 0
    # Without an entry for the host, the error's "tried" list names it (never what it holds).
    write_json(legacy, {'elsewhere.example': {'auth': b64('u:NeverShowThis')}})
    missing = info(reg, 'team/app', clean_env(home))
    line = one_error_line(missing)
    assert missing.returncode == 1 and 'requires credentials' in line and str(legacy) in line
    assert 'NeverShowThis' not in missing.stderr
    legacy.unlink()
    assert '%s (absent)' % legacy in one_error_line(info(reg, 'team/app', clean_env(home)))


@pytest.mark.parametrize('content, fragment', [
    ('{"https://HOST": ', '.dockercfg is not JSON'),
    ('["HOST"]', '.dockercfg is not a JSON object'),
    ('{"HOST": "not an entry", "other": {"auth": "%%%not base64"}, "auths": {"HOST": {"auth": "x"}}}',
     'requires credentials'),
])
def test_a_malformed_legacy_dockercfg_is_one_line(private, tmp_path, content, fragment):
    reg, _ = private
    home = tmp_path / 'home'
    home.mkdir()
    (home / '.dockercfg').write_text(content.replace('HOST', reg.host))
    result = info(reg, 'team/app', clean_env(home))
    assert result.returncode == 1
    assert fragment in one_error_line(result)
