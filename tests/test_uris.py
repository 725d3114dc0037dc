"""URI and filter grammar: what parses, and that errors name the bad part."""

import pytest

from occystrap.errors import UsageError
from occystrap.uris import parse_filter, parse_uri, redact


def test_registry_reference_with_tag_and_options():
    uri = parse_uri('registry://localhost:5000/library/ubuntu:22.04?os=linux&arch=arm64&insecure=true', 'input')
    assert (uri.scheme, uri.host, uri.name, uri.tag, uri.digest) == ('registry', 'localhost:5000', 'library/ubuntu',
                                                                     '22.04', None)
    assert uri.options['arch'] == 'arm64'
    assert uri.flag('insecure') is True


def test_registry_default_tag_and_digest():
    assert parse_uri('registry://r.example/app', 'input').tag == 'latest'
    digest = 'sha256:' + 'a' * 64
    uri = parse_uri('registry://r.example/app@' + digest, 'input')
    assert uri.digest == digest and uri.tag is None
    assert uri.reference == 'app@' + digest


def test_registry_credentials_are_parsed_and_redacted():
    uri = parse_uri('registry://bob:s3cret@host:5000/team/app:v1', 'input')
    assert (uri.username, uri.password) == ('bob', 's3cret')
    assert 's3cret' not in str(uri)
    assert 's3cret' not in redact('quay://org?token=s3cret')


def test_registry_glob_only_for_input():
    uri = parse_uri('registry://host/team/app-*:v2', 'input')
    assert uri.is_glob and uri.name == 'team/app-*' and uri.tag == 'v2'
    with pytest.raises(UsageError, match="'app-\\*'"):
        parse_uri('registry://host/team/app-*:v2', 'output')


def test_quay_forms():
    uri = parse_uri('quay://projectquay', 'input')
    assert (uri.host, uri.name, uri.tag) == ('projectquay', 'projectquay/*', 'latest')
    uri = parse_uri('quay://org/clair*:v4?token=abc&api=http://127.0.0.1:9/api/v1', 'input')
    assert (uri.name, uri.tag, uri.options['token']) == ('org/clair*', 'v4', 'abc')
    assert parse_uri('quay://org:stable', 'input').tag == 'stable'


def test_docker_keeps_registry_host_in_name():
    uri = parse_uri('docker://localhost:5000/app:1?socket=/run/x.sock', 'input')
    assert (uri.name, uri.tag, uri.options['socket']) == ('localhost:5000/app', '1', '/run/x.sock')
    assert parse_uri('docker://busybox', 'output').tag == 'latest'


def test_path_schemes():
    assert parse_uri('tar:///tmp/a.tar', 'input').path == '/tmp/a.tar'
    assert parse_uri('file:///tmp/a.tar', 'input').scheme == 'tar'
    uri = parse_uri('dir:///srv/images?unique_names=true&expand=1', 'output')
    assert uri.flag('unique_names') and uri.flag('expand')


@pytest.mark.parametrize('text,role,fragment', [
    ('ubuntu:latest', 'input', 'is not a URI'),
    ('ftp://host/x', 'input', "unknown source scheme 'ftp'"),
    ('dir:///x', 'input', "unknown source scheme 'dir'"),
    ('quay://org', 'output', "unknown destination scheme 'quay'"),
    ('registry://host', 'input', 'needs a host and a repository'),
    ('registry://host/UPPER', 'input', "'UPPER'"),
    ('registry://host/app:bad!tag', 'input', "bad tag 'bad!tag'"),
    ('registry://host/app@sha256:abc', 'input', "bad digest 'sha256:abc'"),
    ('registry://ho st/app', 'input', "bad registry host 'ho st'"),
    ('registry://host:99999/app', 'input', 'bad port 99999'),
    ('dir:///x?colour=red', 'output', "unknown option 'colour'"),
    ('dir:///x?expand=maybe', 'output', 'must be true or false'),
    ('tar://', 'output', 'needs a path'),
    ('quay://Org', 'input', "bad organisation 'Org'"),
])
def test_errors_name_the_bad_part(text, role, fragment):
    with pytest.raises(UsageError) as e:
        parse_uri(text, role)
    assert fragment in str(e.value)
    assert '\n' not in str(e.value)


def test_filter_grammar():
    spec = parse_filter('exclude:pattern=*.pyc,*.pyo')
    assert spec.name == 'exclude' and spec.options == {'pattern': '*.pyc,*.pyo'}
    spec = parse_filter('search:pattern=bin/*,regex=false,script_friendly=true')
    assert spec.options == {'pattern': 'bin/*', 'regex': 'false', 'script_friendly': 'true'}
    assert parse_filter('normalize-timestamps').options == {}
    assert str(parse_filter('normalize-timestamps:ts=5')) == 'normalize-timestamps:ts=5'


@pytest.mark.parametrize('text,fragment', [
    ('nope', "unknown filter 'nope'"),
    ('exclude:*.pyc', "option '*.pyc' needs a value"),
    ('exclude:pattern=a,pattern=b', "sets 'pattern' twice"),
    (':x=1', 'has no name'),
])
def test_filter_errors(text, fragment):
    with pytest.raises(UsageError, match=None) as e:
        parse_filter(text, known=('exclude', 'search'))
    assert fragment in str(e.value)
