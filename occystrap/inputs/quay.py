"""quay:// inputs: every repository of a Quay organisation that matches a glob and has the tag.

`quay://ORG[/GLOB][:TAG][?token=&api=URL&registry=HOST&insecure=true]` lists the organisation's repositories
through the Quay REST API v1 (`GET {api}/repository?namespace=ORG&public=true`, following `next_page`), keeps the
names matching GLOB (fnmatch, default `*`), then asks for the tag of every match concurrently
(`GET {api}/repository/ORG/REPO/tag/?specificTag=TAG&onlyActiveTags=true`). Images are then pulled from the
organisation's registry (`registry=`, default the public Quay registry) with the registry input.

Every API request goes through the run's shared HTTP client, so --rate-limit, --retries and the connection pool
apply to the listing and tag checks as to the pulls. A `token=` is sent to the API only (as a Bearer token), never
to the registry and never logged; with it the listing also returns the private repositories the token may read.
"""

import fnmatch
import logging
import threading
import urllib.parse

from occystrap import schemes
from occystrap.errors import OccystrapError, RegistryError
from occystrap.pipeline import ImageInput, ImageRef, lookup_workers
from occystrap.registry.http import LISTING_LIMIT
from occystrap.uris import Uri

LOG = logging.getLogger(__name__)

DEFAULT_API = 'https://quay.io/api/v1'
DEFAULT_REGISTRY = 'quay.io'
# Query options of quay:// that mean the same for the registry the images are pulled from.
REGISTRY_OPTIONS = schemes.shared_options('quay', 'registry', 'input')
MAX_PAGES = 10000


class QuayApiError(RegistryError):
    """The Quay API refused or answered something we cannot use."""


def match_repositories(names, pattern):
    """The names matching the fnmatch `pattern` (case-sensitive, as repository names are), sorted, duplicates gone."""
    return sorted({name for name in names if fnmatch.fnmatchcase(name, pattern)})


class QuayApi:
    """The few Quay REST API v1 calls we need, through the run's HttpClient."""

    def __init__(self, http, base_url, token=None):
        self.http = http
        self.base_url = base_url.rstrip('/')
        self._token = token
        self.pages = 0                # repository list pages fetched, for --verbose and the latency script

    def _headers(self):
        headers = {'Accept': 'application/json'}
        if self._token:
            headers['Authorization'] = 'Bearer ' + self._token
        return headers

    def _get(self, path, params, what):
        url = self.base_url + path
        response = self.http.request('GET', url, headers=self._headers(), params=params, limit=LISTING_LIMIT,
                                     what='the Quay API %s answer for %s' % (self.base_url, what))
        try:
            if response.status_code == 200:
                try:
                    return response.json()
                except (ValueError, RecursionError):
                    raise QuayApiError('Quay API %s answered non-JSON for %s' % (self.base_url, what), status=200)
            return response.status_code
        finally:
            response.close()

    def repositories(self, namespace):
        """Every repository name of `namespace` visible to us, following `next_page` until the last page."""
        names = []
        seen_tokens = set()
        params = {'namespace': namespace, 'public': 'true'}
        while True:
            what = 'the repositories of %s' % namespace
            body = self._get('/repository', params, what)
            if body in (401, 403):
                hint = 'is token= right?' if self._token else 'a private organisation needs token='
                raise QuayApiError('Quay API %s refused to list %s (%d; %s)' % (self.base_url, what, body, hint),
                                   status=body)
            if body == 404:
                raise QuayApiError('Quay API %s knows no organisation %s' % (self.base_url, namespace), status=404)
            if isinstance(body, int):
                raise QuayApiError('Quay API %s answered %d for %s' % (self.base_url, body, what), status=body)
            self.pages += 1
            repositories = body.get('repositories') if isinstance(body, dict) else None
            if not isinstance(repositories, list):
                raise QuayApiError('Quay API %s answered without a repository list for %s' % (self.base_url, what))
            for repository in repositories:
                if isinstance(repository, dict) and repository.get('name') and \
                        repository.get('namespace', namespace) == namespace:
                    names.append(repository['name'])
            token = body.get('next_page')
            if not token:
                return names
            if token in seen_tokens or len(seen_tokens) >= MAX_PAGES:
                raise QuayApiError('Quay API %s repeats page token while listing %s' % (self.base_url, what))
            seen_tokens.add(token)
            params = {'namespace': namespace, 'public': 'true', 'next_page': token}

    def has_tag(self, namespace, repository, tag):
        """True when the repository has `tag` as an active tag; False when it (or the repository) is absent."""
        path = '/repository/%s/%s/tag/' % (urllib.parse.quote(namespace, safe=''),
                                           urllib.parse.quote(repository, safe=''))
        what = 'tag %s of %s/%s' % (tag, namespace, repository)
        body = self._get(path, {'specificTag': tag, 'onlyActiveTags': 'true'}, what)
        if body == 404:
            return False
        if body in (401, 403):
            raise QuayApiError('Quay API %s refused to show %s (%d)' % (self.base_url, what, body), status=body)
        if isinstance(body, int):
            raise QuayApiError('Quay API %s answered %d for %s' % (self.base_url, body, what), status=body)
        tags = body.get('tags') if isinstance(body, dict) else None
        if not isinstance(tags, list):
            raise QuayApiError('Quay API %s answered without a tag list for %s' % (self.base_url, what))
        return any(isinstance(t, dict) and t.get('name') == tag for t in tags)


class QuayInput(ImageInput):
    """The images of a Quay organisation (see the module docstring); always a multi-image source."""

    def __init__(self, uri, ctx):
        super().__init__(uri, ctx)
        self.org = uri.host
        self.pattern = uri.name.split('/', 1)[1] if '/' in uri.name else '*'
        self.tag = uri.tag or 'latest'
        self.api_url = uri.options.get('api') or DEFAULT_API
        parts = urllib.parse.urlsplit(self.api_url)
        try:
            parts.port    # a password holding '/' ends the authority early and leaves a bad port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ('http', 'https') or not parts.hostname:
            # The URL may hold credentials: show it only as the redacted URI does.
            raise OccystrapError('api= in %s is not an http(s) URL (/ ? # @ in its credentials need encoding twice, '
                                 'as %%252F)' % uri)
        self.registry = uri.options.get('registry') or DEFAULT_REGISTRY
        self._api = None
        self._registry_input = None
        self._lock = threading.Lock()

    @property
    def multi(self):
        return True

    @property
    def api(self):
        if self._api is None:
            self._api = QuayApi(self.ctx.http, self.api_url, self.uri.options.get('token'))
        return self._api

    def references(self):
        names = self.api.repositories(self.org)
        matches = match_repositories(names, self.pattern)
        LOG.info('quay organisation %s: %d repositories in %d page%s, %d match %s', self.org, len(names),
                 self.api.pages, '' if self.api.pages == 1 else 's', len(matches), self.pattern)
        if not matches:
            raise OccystrapError('no repository of Quay organisation %s matches %s' % (self.org, self.pattern))
        present = self._check_tags(matches)
        for name, ok in zip(matches, present):
            if not ok:
                LOG.info('skipping %s/%s: it has no tag %s', self.org, name, self.tag)
        refs = [ImageRef('%s/%s' % (self.org, name), tag=self.tag) for name, ok in zip(matches, present) if ok]
        if not refs:
            raise OccystrapError('no repository of Quay organisation %s matching %s has tag %s'
                                 % (self.org, self.pattern, self.tag))
        return refs

    def _check_tags(self, names):
        # One request per repository: in a row that is one round trip each, so keep many in flight.
        workers = lookup_workers(self.ctx.settings, len(names))
        return self.ctx.map(lambda name: self.api.has_tag(self.org, name, self.tag), names, workers=workers)

    def registry_uri(self):
        """The registry:// source the images are pulled from (no token: that is for the API only)."""
        options = {k: v for k, v in self.uri.options.items() if k in REGISTRY_OPTIONS}
        return Uri(scheme='registry', raw='registry://%s/%s/%s:%s' % (self.registry, self.org, self.pattern, self.tag),
                   role='input', host=self.registry.lower(), name='%s/%s' % (self.org, self.pattern), tag=self.tag,
                   options=options)

    def open(self, ref):
        """The image from the organisation's registry, opened as registry:// would (platform options apply)."""
        with self._lock:
            if self._registry_input is None:
                from occystrap.inputs.registry import RegistryInput
                self._registry_input = RegistryInput(self.registry_uri(), self.ctx)
            source = self._registry_input
        return source.open(ref)

    def close(self):
        if self._registry_input is not None:
            self._registry_input.close()
