"""Tag globs: registry://host/repo:GLOB copies every matching tag, alone or with a repository glob.

A real docker-registry of this module holds, seeded with skopeo (each tag a different image):
tg/app with v1.0 v1.1 v1.10 v10.0 v2.0 latest V1.5 xv1.0, tg/tool with v1.0 v2.0, and other/app with v1.0.
docker-registry 2.8 lists every tag in one answer, so the sources go through tools/tagpager.py, which pages the
registry's own tag lists as the distribution spec says (2 a page, Link headers): the tags reach us over 4 pages.
"""

import hashlib
import json
import subprocess
import sys

import pytest

from occystrap import pipeline
from occystrap.errors import OccystrapError, UsageError
from occystrap.pipeline import RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.services import Registry, build_oci_layout, seed_image, skopeo, skopeo_inspect
from tools.delayproxy import FaultProxy, answer
from tools.tagpager import TagPagingProxy

pytestmark = pytest.mark.integration

APP_TAGS = ('v1.0', 'v1.1', 'v1.10', 'v10.0', 'v2.0', 'latest', 'V1.5', 'xv1.0')
TOOL_TAGS = ('v1.0', 'v2.0')
SEEDED = [('tg/app', t) for t in APP_TAGS] + [('tg/tool', t) for t in TOOL_TAGS] + [('other/app', 'v1.0')]


@pytest.fixture(scope='module')
def seeded(tmp_path_factory):
    """(registry, {(name, tag): manifest digest}), every image pushed by skopeo."""
    tmp = tmp_path_factory.mktemp('tag-globs')
    with Registry(tmp / 'registry') as registry:
        digests = {}
        for name, tag in SEEDED:
            layout = build_oci_layout(tmp / ('%s-%s' % (name.replace('/', '_'), tag)), layers=[
                {'etc': {'type': 'dir'}, 'etc/base.txt': b'shared base\n'},
                {'etc/ref': ('%s:%s\n' % (name, tag)).encode()},
            ])
            digests[(name, tag)] = seed_image(registry, name, tag, layout.path)
        yield registry, digests


@pytest.fixture
def pager(seeded):
    registry, _ = seeded
    with TagPagingProxy(registry.url, page_size=2) as proxy:
        yield proxy


def occystrap(*args):
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=180)


def test_tag_globs_parse_only_in_registry_sources():
    uri = parse_uri('registry://host/team/app:v1.[0-9]*', 'input')
    assert (uri.name, uri.tag, uri.tag_is_glob, uri.is_glob) == ('team/app', 'v1.[0-9]*', True, False)
    both = parse_uri('registry://host/team/*:[!v]*', 'input')
    assert both.is_glob and both.tag_is_glob
    assert not parse_uri('registry://host/team/app:v1.0?insecure=true', 'input').tag_is_glob
    for text, role in (('registry://host/team/app:v1.*', 'output'), ('docker://team/app:v1.*', 'input')):
        with pytest.raises(UsageError, match="bad tag 'v1.\\*'.*a tag glob names a registry:// source"):
            parse_uri(text, role)


@pytest.mark.parametrize('text,fragment', [
    ('registry://host/app:v1.[0-9', "'[' is not closed by ']'"),
    ('registry://host/app:v1.[]', "the class '[]'"),
    ('registry://host/app:v1.[!]', "the class '[!]'"),
    ('registry://host/app:v1.[a~b]*', "the class '[a~b]'"),
    ('registry://host/app:v1]*', "']' cannot be in a tag"),
    ('registry://host/app:v1.*~', "'~' cannot be in a tag"),
    ('registry://host/app:*' + 'x' * 300, 'longer than 256 characters'),
    ('registry://host/app:v1.*@sha256:' + 'a' * 64, 'a glob cannot be combined with a digest'),
])
def test_bad_tag_globs_are_one_line_usage_errors(text, fragment):
    with pytest.raises(UsageError) as raised:
        parse_uri(text, 'input')
    assert fragment in str(raised.value) and '\n' not in str(raised.value)


def references(host, path, **settings):
    ctx = RunContext(Settings(insecure=True, **settings))
    try:
        source = pipeline.build_input(parse_uri('registry://%s/%s' % (host, path), 'input'), ctx)
        return [(ref.name, ref.tag) for ref in source.references()], source.multi
    finally:
        ctx.close()


def registry_tags(registry, name):
    listed = skopeo('list-tags', '--tls-verify=false', '--no-creds', 'docker://%s/%s' % (registry.host, name))
    return sorted(json.loads(listed.stdout)['Tags'])


def digest_at(registry, name, tag):
    raw = skopeo_inspect('docker://%s/%s:%s' % (registry.host, name, tag), raw=True, parse=False)
    return 'sha256:' + hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize('glob,expected', [
    ('v1.*', ['v1.0', 'v1.1', 'v1.10']),                 # anchored: not v10.0, not xv1.0; case-sensitive: not V1.5
    ('v1.[01]', ['v1.0', 'v1.1']),                       # a class is one character: not v1.10
    ('v1.1*', ['v1.1', 'v1.10']),
    ('[!v]*', ['V1.5', 'latest', 'xv1.0']),
    ('*', sorted(APP_TAGS)),
    ('v[0-9]*.0', ['v1.0', 'v10.0', 'v2.0']),
])
def test_a_tag_glob_names_exactly_the_matching_tags_over_every_page(seeded, pager, glob, expected):
    refs, multi = references(pager.netloc, 'tg/app:%s' % glob)
    assert multi
    assert refs == [('tg/app', tag) for tag in expected]
    # The whole list was read through Link pages of two: 8 tags in lexical order, 4 pages, each starting after the
    # previous page's final tag.
    pages = [page for page in pager.pages if page[0] == 'tg/app']
    assert [last for _, _, last, _ in pages] == [None, 'latest', 'v1.1', 'v10.0']
    assert sorted(tag for _, _, _, tags in pages for tag in tags) == sorted(APP_TAGS)


def test_process_copies_exactly_the_matching_tags_with_their_digests(seeded, pager):
    registry, digests = seeded
    result = occystrap('--insecure', '-O', 'json', 'process', 'registry://%s/tg/app:v1.*' % pager.netloc,
                       'registry://%s/mirror-one' % registry.host)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [r['image'] for r in summary['results']] == ['tg/app:v1.0', 'tg/app:v1.1', 'tg/app:v1.10']
    assert summary['images'] == 3 and summary['failed'] == 0
    # The destination of a multi-image source keeps each image's tag under PREFIX/<last name component>.
    assert registry_tags(registry, 'mirror-one/app') == ['v1.0', 'v1.1', 'v1.10']
    for tag in ('v1.0', 'v1.1', 'v1.10'):
        assert digest_at(registry, 'mirror-one/app', tag) == digests[('tg/app', tag)]


def test_a_tag_glob_combines_with_a_repository_glob(seeded, pager):
    registry, digests = seeded
    assert references(pager.netloc, 'tg/*:v1.[01]')[0] == [('tg/app', 'v1.0'), ('tg/app', 'v1.1'),
                                                           ('tg/tool', 'v1.0')]
    result = occystrap('--insecure', '-J', '3', 'process', 'registry://%s/tg/*:v2.*' % pager.netloc,
                       'registry://%s/mirror-two' % registry.host)
    assert result.returncode == 0, result.stderr
    assert registry_tags(registry, 'mirror-two/app') == ['v2.0']
    assert registry_tags(registry, 'mirror-two/tool') == ['v2.0']
    assert digest_at(registry, 'mirror-two/tool', 'v2.0') == digests[('tg/tool', 'v2.0')]
    # other/app has v2.0 neither, and tg/* never reaches it; nothing else was written under the prefix.
    catalog = registry.client().get('/v2/_catalog', params={'n': 1000}).json()['repositories']
    assert sorted(n for n in catalog if n.startswith('mirror-two/')) == ['mirror-two/app', 'mirror-two/tool']


def test_a_tag_glob_that_matches_nothing_is_an_error_and_writes_nothing(seeded, pager):
    registry, _ = seeded
    result = occystrap('--insecure', 'process', 'registry://%s/tg/app:v9.*' % pager.netloc,
                       'registry://%s/mirror-none' % registry.host)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == 'error: no tag of tg/app on %s matches v9.*' % pager.netloc
    assert 'Traceback' not in result.stderr
    catalog = registry.client().get('/v2/_catalog', params={'n': 1000}).json()['repositories']
    assert not [n for n in catalog if n.startswith('mirror-none')]
    with pytest.raises(OccystrapError, match='matching tg/\\* has a tag matching v9'):
        references(pager.netloc, 'tg/*:v9.*')


def test_a_tag_glob_of_a_missing_repository_fails(seeded, pager):
    result = occystrap('--insecure', 'info', 'registry://%s/tg/nope:v1.*' % pager.netloc)
    assert result.returncode == 1
    assert 'tg/nope' in result.stderr and '404' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('source', ['tg/app:v1.?', 'tg/app:v?.0', 'tg/ap?:v1.0'])
def test_a_question_mark_is_a_usage_error_that_points_at_brackets(seeded, source):
    registry, _ = seeded
    result = occystrap('--insecure', 'info', 'registry://%s/%s' % (registry.host, source))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'?' starts the query" in lines[0] and '[...]' in lines[0]


def test_hostile_tag_names_from_a_registry_never_reach_a_url_an_output_or_a_terminal(seeded):
    registry, digests = seeded
    listed = ['v1.0', 'v1.\x1b[31mred', 'v1.0/../../../etc', 'v1.' + 'x' * 300, 'v1.1', 'v1.0', 'v1.\u202eevil', 7]
    body = json.dumps({'name': 'tg/app', 'tags': listed}).encode()
    rule = answer(r'^/v2/tg/app/tags/list', 200, headers={'Content-Type': 'application/json'}, body=body)
    with FaultProxy(registry.url, [rule]) as proxy:
        result = occystrap('--insecure', '-O', 'json', 'process', 'registry://%s/tg/app:v1.*' % proxy.netloc,
                           'registry://%s/mirror-hostile' % registry.host)
        asked = [path for _, _, path, _ in proxy.received]
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    ok = [r['image'] for r in summary['results'] if r['ok']]
    assert ok == ['tg/app:v1.0', 'tg/app:v1.1']                     # listed twice, copied once
    failed = [r for r in summary['results'] if not r['ok']]
    assert len(failed) == 4 and summary['failed'] == 4
    assert all('lists an invalid tag' in r['error'] for r in failed)
    # Escaped wherever they are shown; never asked for, so never in a URL; nothing pushed under them.
    for text in (result.stderr, result.stdout):
        assert '\x1b' not in text and '\u202e' not in text
    assert "\\x1b[31mred" in result.stderr
    assert not [p for p in asked if '/manifests/' in p and not p.endswith(('/manifests/v1.0', '/manifests/v1.1'))]
    assert registry_tags(registry, 'mirror-hostile/app') == ['v1.0', 'v1.1']
    assert digest_at(registry, 'mirror-hostile/app', 'v1.1') == digests[('tg/app', 'v1.1')]
