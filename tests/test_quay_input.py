"""quay:// resolution: glob filtering, next_page pagination, concurrent tag checks, tokens, errors.

The public Quay API cannot be reached from here, so these run against tools/quay_standin.py (a faithful local
stand-in for the Quay REST API v1) serving static data; pulling the images is covered in test_multi_image.py.
"""

import logging
import time

import pytest

from occystrap.errors import OccystrapError
from occystrap.inputs.quay import QuayApi, QuayApiError, QuayInput, match_repositories
from occystrap.pipeline import lookup_workers
from occystrap.pipeline import ImageRef, RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tools.quay_standin import QuayStandin

DIGEST = 'sha256:' + 'ab' * 32


def org_data(count=25, without_tag=(), other=()):
    """{'acme': {...}}: app-00..app-NN with tag v1 (except `without_tag`, which only have v2), plus `other` names."""
    repos = {}
    for i in range(count):
        name = 'app-%02d' % i
        tags = {'v2': {'manifest_digest': DIGEST, 'size': 10}}
        if i not in without_tag:
            tags['v1'] = {'manifest_digest': DIGEST, 'size': 10}
        repos[name] = {'description': '', 'tags': tags}
    for name in other:
        repos[name] = {'description': '', 'tags': {'v1': {'manifest_digest': DIGEST, 'size': 10}}}
    return {'acme': repos, 'elsewhere': {'app-99': {'tags': {'v1': {'manifest_digest': DIGEST}}}}}


@pytest.fixture
def context():
    ctx = RunContext(Settings())
    yield ctx
    ctx.close()


def quay_input(text, ctx):
    return QuayInput(parse_uri(text, 'input'), ctx)


def test_match_repositories_is_fnmatch_on_the_name():
    names = ['app-1', 'app-2', 'tool', 'app-10', 'App-3', 'app-1']
    assert match_repositories(names, '*') == ['App-3', 'app-1', 'app-10', 'app-2', 'tool']
    assert match_repositories(names, 'app-?') == ['app-1', 'app-2']
    assert match_repositories(names, 'app-[12]*') == ['app-1', 'app-10', 'app-2']
    assert match_repositories(names, 'nothing*') == []


def test_tag_check_workers_scale_with_image_parallelism_but_not_past_the_work():
    assert lookup_workers(Settings(), 100) == 12
    assert lookup_workers(Settings(parallel=1, image_parallel=1), 100) == 8
    assert lookup_workers(Settings(parallel=8, image_parallel=6), 100) == 24
    assert lookup_workers(Settings(parallel=16, image_parallel=6), 100) == 24, '-j does not size tag checks'
    assert lookup_workers(Settings(), 3) == 3


def test_uri_parts_and_defaults(context):
    source = quay_input('quay://acme', context)
    assert (source.org, source.pattern, source.tag) == ('acme', '*', 'latest')
    assert source.api_url == 'https://quay.io/api/v1' and source.registry == 'quay.io'
    assert source.multi
    source = quay_input('quay://acme/app-*:v1?api=http://127.0.0.1:1/api/v1&registry=127.0.0.1:2', context)
    assert (source.pattern, source.tag, source.api_url, source.registry) == \
        ('app-*', 'v1', 'http://127.0.0.1:1/api/v1', '127.0.0.1:2')
    with pytest.raises(OccystrapError, match='not an http'):
        quay_input('quay://acme?api=ftp://example.invalid/', context)


def test_listing_follows_every_page(context):
    with QuayStandin(data=org_data(25), page_size=7) as standin:
        api = QuayApi(context.http, standin.url + '/api/v1')
        names = api.repositories('acme')
    assert names == ['app-%02d' % i for i in range(25)]
    assert api.pages == 4


def test_references_keep_matching_repositories_that_have_the_tag(context, caplog):
    data = org_data(25, without_tag=(3, 17), other=('tool', 'app'))
    with QuayStandin(data=data, page_size=10) as standin:
        source = quay_input('quay://acme/app-*:v1?api=%s/api/v1' % standin.url, context)
        with caplog.at_level(logging.INFO, logger='occystrap.inputs.quay'):
            refs = source.references()
        # one request per page (3) and one tag check per match (25)
        assert standin.request_count == 3 + 25
    expected = [ImageRef('acme/app-%02d' % i, tag='v1') for i in range(25) if i not in (3, 17)]
    assert refs == expected
    skipped = [r.getMessage() for r in caplog.records if 'skipping' in r.getMessage()]
    assert skipped == ['skipping acme/app-03: it has no tag v1', 'skipping acme/app-17: it has no tag v1']


def test_default_glob_and_tag(context):
    data = {'acme': {'one': {'tags': {'latest': {'manifest_digest': DIGEST}}},
                     'two': {'tags': {'v1': {'manifest_digest': DIGEST}}}}}
    with QuayStandin(data=data) as standin:
        refs = quay_input('quay://acme?api=%s/api/v1' % standin.url, context).references()
    assert refs == [ImageRef('acme/one', tag='latest')]


def test_tag_checks_run_concurrently(context):
    # 40 tag checks at 100 ms each: one after another that is 4 s; 12 at a time (the defaults) about 0.4 s.
    with QuayStandin(data=org_data(40), delay_ms=100) as standin:
        source = quay_input('quay://acme/*:v1?api=%s/api/v1' % standin.url, context)
        started = time.monotonic()
        refs = source.references()
        elapsed = time.monotonic() - started
    assert len(refs) == 40
    assert elapsed < 1.5, 'tag checks took %.2f s: they are not concurrent' % elapsed


def test_requests_go_through_the_shared_client_and_its_rate_limit():
    ctx = RunContext(Settings(rate_limit=10))
    try:
        with QuayStandin(data=org_data(12)) as standin:
            source = quay_input('quay://acme/*:v1?api=%s/api/v1' % standin.url, ctx)
            started = time.monotonic()
            assert len(source.references()) == 12
            elapsed = time.monotonic() - started
        assert ctx.http.requests == 13
        # A burst of 10, then 3 more at 10 per second.
        assert elapsed >= 0.25 and ctx.http.limiter.waited > 0
    finally:
        ctx.close()


def test_token_is_sent_to_the_api_and_never_logged(context, caplog):
    token = 'sekrit-quay-token-1234'
    with QuayStandin(data=org_data(3), token=token) as standin:
        api = '%s/api/v1' % standin.url
        with pytest.raises(QuayApiError, match=r'refused to list .*\(401; .*needs token='):
            quay_input('quay://acme?api=%s' % api, context).references()
        with caplog.at_level(logging.DEBUG):
            refs = quay_input('quay://acme/*:v1?token=%s&api=%s' % (token, api), context).references()
        assert len(refs) == 3
        with pytest.raises(QuayApiError, match='is token= right') as raised:
            quay_input('quay://acme?token=wrong&api=%s' % api, context).references()
    assert 'wrong' not in str(raised.value)
    assert token not in caplog.text
    source = quay_input('quay://acme?token=%s&api=%s' % (token, api), context)
    assert token not in str(source.uri) and token not in source.registry_uri().raw
    assert 'token' not in source.registry_uri().options


def test_no_match_and_no_tag_are_errors(context):
    with QuayStandin(data=org_data(5, without_tag=range(5))) as standin:
        api = '%s/api/v1' % standin.url
        with pytest.raises(OccystrapError, match='no repository of Quay organisation acme matches tool-\\*'):
            quay_input('quay://acme/tool-*:v1?api=%s' % api, context).references()
        with pytest.raises(OccystrapError, match='matching app-\\* has tag v1'):
            quay_input('quay://acme/app-*:v1?api=%s' % api, context).references()


def test_unreachable_api_is_a_one_line_error():
    ctx = RunContext(Settings(retries=0))
    try:
        with QuayStandin(data=org_data(1)) as standin:
            url = standin.url
        with pytest.raises(OccystrapError, match='cannot reach 127.0.0.1'):
            quay_input('quay://acme?api=%s/api/v1' % url, ctx).references()
    finally:
        ctx.close()


def test_rate_limited_answers_are_retried_and_rate_limit_avoids_them():
    # The stand-in answers 429 with Retry-After: 1 past 3 requests a second per client, as quay.io rate-limits.
    for rate_limit, expect_retries in ((None, True), (1.5, False)):
        ctx = RunContext(Settings(retries=5, rate_limit=rate_limit))
        try:
            with QuayStandin(data=org_data(4), rate_limit=3) as standin:
                refs = quay_input('quay://acme/*:v1?api=%s/api/v1' % standin.url, ctx).references()
            assert len(refs) == 4
            assert (ctx.http.retried > 0) == expect_retries, (rate_limit, ctx.http.retried)
        finally:
            ctx.close()
