"""Pytest fixtures that start real services of the test bed (``tools/testbed``, named for tests in services.py).

Session-scoped registries are shared by every test of a run (each xdist worker has its own), so a test that
writes to one should push to a repository name of its own: the ``repo_name`` fixture gives one. Use
``fresh_registry`` when a test needs an empty registry or inspects its whole storage or log.

Fixtures:

- ``registry``: plain HTTP, no auth (session)
- ``fresh_registry``: plain HTTP, no auth, new for the test (function)
- ``tls_registry``: HTTPS with HTTP/2, ``ca_path`` for clients (session)
- ``basic_auth_registry``: HTTPS + htpasswd Basic auth, ``username``/``password`` (session)
- ``token_registry``: plain HTTP + token auth, ``token_server`` counts token requests (function, so counts
  start at zero)
- ``podman_service``: ``podman system service`` on ``socket_path`` with isolated vfs storage (session)
- ``repo_name``: a repository name unique to the test, e.g. ``test/test-copy-works-3``
- ``oci_image``: a small two-layer OCI layout built with ``build_oci_layout`` (function)
"""

import itertools
import os
import re

import pytest

from tests.services import Podman, Registry, build_oci_layout


# Tests talk to servers on loopback; a proxy set in the developer's shell would carry those requests (occystrap
# honours *_PROXY as curl does, loopback included). Tests of proxies set these variables themselves.
PROXY_VARIABLES = ('http_proxy', 'https_proxy', 'all_proxy', 'no_proxy')


def pytest_configure(config):
    for name in PROXY_VARIABLES:
        os.environ.pop(name, None)
        os.environ.pop(name.upper(), None)
    config.addinivalue_line('markers', 'integration: starts real services (docker-registry, podman, skopeo)')


@pytest.fixture(scope='session')
def registry(tmp_path_factory):
    """A plain-HTTP registry shared by the session; push to ``repo_name`` to stay out of other tests' way."""
    with Registry(tmp_path_factory.mktemp('registry')) as reg:
        yield reg


@pytest.fixture
def fresh_registry(tmp_path_factory):
    """A plain-HTTP registry started for this test alone."""
    with Registry(tmp_path_factory.mktemp('fresh-registry')) as reg:
        yield reg


@pytest.fixture(scope='session')
def tls_registry(tmp_path_factory):
    """An HTTPS registry (HTTP/2 via ALPN) with a generated CA at ``ca_path``."""
    with Registry(tmp_path_factory.mktemp('tls-registry'), tls=True) as reg:
        yield reg


@pytest.fixture(params=['plain', 'tls'])
def reg(request):
    """The session's plain or TLS registry, with the flags occystrap needs to reach it."""
    registry = request.getfixturevalue('registry' if request.param == 'plain' else 'tls_registry')
    registry.flags = ['--ca-cert', str(registry.ca_path)] if registry.tls else []
    registry.query = '' if registry.tls else '?insecure=true'
    return registry


@pytest.fixture(scope='session')
def basic_auth_registry(tmp_path_factory):
    """An HTTPS registry that demands htpasswd Basic auth as ``username``/``password``."""
    with Registry(tmp_path_factory.mktemp('basic-registry'), tls=True, auth='basic') as reg:
        yield reg


@pytest.fixture
def token_registry(tmp_path_factory):
    """A plain-HTTP registry with Docker token auth; ``token_server`` records each token request."""
    with Registry(tmp_path_factory.mktemp('token-registry'), auth='token') as reg:
        yield reg


@pytest.fixture(scope='session')
def podman_service(tmp_path_factory):
    """A real Podman API service; ``socket_path`` for clients, ``podman(*args)`` for the CLI on the same storage."""
    with Podman(tmp_path_factory.mktemp('podman')) as service:
        yield service


_repo_counter = itertools.count(1)


@pytest.fixture
def repo_name(request):
    """A repository name unique within the session, derived from the test name."""
    slug = re.sub(r'[^a-z0-9]+', '-', request.node.name.lower()).strip('-')[:60].strip('-') or 'repo'
    return f'test/{slug}-{next(_repo_counter)}'


@pytest.fixture
def oci_image(tmp_path):
    """A deterministic two-layer gzip OCI image layout (tag ``latest``); see ``OciImage`` for its digests."""
    return build_oci_layout(tmp_path / 'oci-image', layers=[
        {'etc': {'type': 'dir'}, 'etc/hello.txt': b'hello from occystrap tests\n'},
        {'usr/bin/tool': {'type': 'file', 'data': b'#!/bin/sh\necho tool\n', 'mode': 0o755},
         'usr/bin/tool-link': {'type': 'symlink', 'target': 'tool'}},
    ])
