"""A local stand-in for the public Quay REST API v1, for tests and benchmarks only.

The real service (quay.io) cannot be reached from here, so this serves the part of its API that a client
needs to enumerate an organisation's repositories and check their tags, with the response shapes of
Quay's own implementation (endpoints/api/repository.py and tag.py in the quay/quay project):

``GET /api/v1/repository?namespace=ORG&public=true[&next_page=TOKEN]``
    ``{"repositories": [{"namespace", "name", "description", "is_public", "kind", "state", ...}],
    "next_page": TOKEN}``: pages of ``page_size`` (default 100, as on quay.io) repositories ordered by
    name; ``next_page`` is an opaque token and is absent on the last page. One of namespace, public or
    starred is required (400 otherwise), as on Quay. An unreadable token gives the first page, as on Quay.
``GET /api/v1/repository/ORG/REPO``
    The repository with ``tags`` (name -> {name, size, last_modified, manifest_digest}); 404 error
    JSON (``{"status": 404, "error_message": "Not Found", "title": "not_found", ...}``) when missing.
``GET /api/v1/repository/ORG/REPO/tag/?specificTag=TAG&onlyActiveTags=true[&limit=N&page=P]``
    ``{"tags": [{"name", "reversion", "start_ts", "manifest_digest", "is_manifest_list", "size",
    "last_modified"}], "page": P, "has_additional": bool}``; an unknown tag gives an empty list.

Data comes from a real registry (``--registry http://127.0.0.1:PORT``: the organisation's repositories
are the catalog entries under ``ORG/``, tags come from ``/v2/NAME/tags/list`` and digests and sizes from
the manifests) or from a static JSON file (``--data FILE``)::

    {"ORG": {"REPO": {"description": "...", "tags": {"latest": {"manifest_digest": "sha256:...",
                                                                 "size": 1234}}}}}

``--token T`` makes every request without ``Authorization: Bearer T`` fail with 401. ``--delay-ms N``
holds each request N ms before answering; requests are served by threads, so concurrent requests overlap
as they do against the real service. ``--rate-limit R`` answers 429 with ``Retry-After`` when a client
address makes more than R requests in a second, as quay.io does. ``--throttle-every N`` answers every Nth
request 429 with ``Retry-After: 0`` whatever the rate (a deterministic count of throttled answers for tests of
clients that count them; ``throttled_count`` says how many were sent).

Usage::

    python tools/quay_standin.py --registry http://127.0.0.1:5000 [--token T] [--delay-ms 50]
"""

import argparse
import base64
import binascii
import collections
import email.utils
import http.server
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    from tools.loopback import BackgroundHTTPServer
except ImportError:  # run as a script from tools/
    from loopback import BackgroundHTTPServer

MANIFEST_ACCEPT = ', '.join((
    'application/vnd.oci.image.index.v1+json',
    'application/vnd.docker.distribution.manifest.list.v2+json',
    'application/vnd.oci.image.manifest.v1+json',
    'application/vnd.docker.distribution.manifest.v2+json',
))
LIST_TYPES = ('application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json')
TAG_EXPIRATION_S = 1209600


class NotFound(Exception):
    pass


class RegistryBackend:
    """Repositories and tags read from a Docker registry v2 API."""

    def __init__(self, url):
        self.url = url.rstrip('/')
        self.start_ts = int(time.time())

    def _get(self, path, accept=None):
        request = urllib.request.Request(self.url + path, headers={'Accept': accept} if accept else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise NotFound(path) from None
            raise

    def repositories(self, namespace):
        names, path = [], '/v2/_catalog?n=1000'
        while path:
            body, headers = self._get(path)
            names.extend(json.loads(body).get('repositories') or [])
            link = headers.get('Link')
            path = link.split(';')[0].strip('<> ') if link else None
        prefix = namespace + '/'
        return [{'name': n[len(prefix):], 'description': ''} for n in sorted(names) if n.startswith(prefix)]

    def repository(self, namespace, name):
        try:
            self._get(f'/v2/{namespace}/{name}/tags/list')
        except NotFound:
            return None
        return {'name': name, 'description': ''}

    def tag_names(self, namespace, name):
        body, _ = self._get(f'/v2/{namespace}/{name}/tags/list')
        return sorted(json.loads(body).get('tags') or [])

    def tag(self, namespace, name, tag):
        try:
            body, headers = self._get(f'/v2/{namespace}/{name}/manifests/{tag}', MANIFEST_ACCEPT)
        except NotFound:
            return None
        content_type = headers.get('Content-Type', '').split(';')[0]
        is_list = content_type in LIST_TYPES
        manifest = json.loads(body)
        size = None if is_list else sum(layer.get('size', 0) for layer in manifest.get('layers', []))
        return {'manifest_digest': headers.get('Docker-Content-Digest'), 'is_manifest_list': is_list,
                'size': size, 'start_ts': self.start_ts}


class StaticBackend:
    """Repositories and tags from a dict {org: {repo: {description, tags: {tag: {manifest_digest, size}}}}}."""

    def __init__(self, data):
        self.data = data
        self.start_ts = int(time.time())

    def repositories(self, namespace):
        repos = self.data.get(namespace, {})
        return [{'name': n, 'description': repos[n].get('description', '')} for n in sorted(repos)]

    def repository(self, namespace, name):
        repo = self.data.get(namespace, {}).get(name)
        return None if repo is None else {'name': name, 'description': repo.get('description', '')}

    def tag_names(self, namespace, name):
        return sorted(self.data[namespace][name].get('tags', {}))

    def tag(self, namespace, name, tag):
        info = self.data[namespace][name].get('tags', {}).get(tag)
        if info is None:
            return None
        return {'manifest_digest': info.get('manifest_digest'), 'is_manifest_list': info.get('is_manifest_list', False),
                'size': info.get('size'), 'start_ts': info.get('start_ts', self.start_ts)}


def _format_date(ts):
    return email.utils.formatdate(ts, usegmt=False)


def _error(status, error_type, detail):
    return status, {'detail': detail, 'error_message': detail, 'error_type': error_type, 'title': error_type,
                    'type': f'/api/v1/error/{error_type}', 'status': status}


def _truthy(value):
    return str(value).lower() in ('true', '1', 'yes', 'on')


def _encode_token(offset):
    return base64.urlsafe_b64encode(json.dumps({'start_index': offset, 'v': 1}).encode()).decode()


def _decode_token(token):
    try:
        return int(json.loads(base64.urlsafe_b64decode(token.encode()))['start_index'])
    except (ValueError, KeyError, TypeError, binascii.Error):
        return 0


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        standin = self.server.owner
        standin._count()
        if standin.delay_ms:
            time.sleep(standin.delay_ms / 1000.0)
        parsed = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        retry_after = standin._rate_limited(self.client_address[0])
        if retry_after is None:
            status, body = _error(429, 'rate_limited', 'Too many requests')
            return self._send(status, body, {'Retry-After': '0'})
        if retry_after:
            status, body = _error(429, 'rate_limited', 'Too many requests')
            return self._send(status, body, {'Retry-After': str(retry_after)})
        if standin.token and self.headers.get('Authorization') != f'Bearer {standin.token}':
            return self._send(*_error(401, 'invalid_token', 'Requires authentication'))
        try:
            status, body = standin._route(parsed.path, query)
        except Exception as exc:  # a backend failure is a 5xx, as a downstream issue is on Quay
            status, body = _error(520, 'downstream_issue', str(exc))
        self._send(status, body)

    def _send(self, status, body, headers=None):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


class QuayStandin(BackgroundHTTPServer):
    """The stand-in server. start() serves on 127.0.0.1 (port 0: a free one) in a thread; url is its base URL.

    Give registry_url (a registry v2 base URL) or data (the static dict described in the module docstring).
    request_count counts every request received, including refused ones.
    """

    def __init__(self, registry_url=None, delay_ms=0, token=None, page_size=100, data=None, rate_limit=None,
                 port=0, throttle_every=None):
        if (registry_url is None) == (data is None):
            raise ValueError('give exactly one of registry_url and data')
        self.backend = RegistryBackend(registry_url) if registry_url else StaticBackend(data)
        self.delay_ms = delay_ms
        self.token = token
        self.page_size = page_size
        self.rate_limit = rate_limit
        self.throttle_every = throttle_every
        super().__init__(port)
        self.request_count = 0
        self.throttled_count = 0
        self._lock = threading.Lock()
        self._recent = collections.defaultdict(collections.deque)

    thread_name = 'quay-standin'
    handler = _Handler

    def _count(self):
        with self._lock:
            self.request_count += 1

    def _rate_limited(self, client):
        """Seconds to wait if this client exceeded rate_limit requests in the last second, else 0; None when this
        is a request throttle_every picks."""
        if self.throttle_every:
            with self._lock:
                if self.request_count % self.throttle_every == 0:
                    self.throttled_count += 1
                    return None
        if not self.rate_limit:
            return 0
        now = time.monotonic()
        with self._lock:
            recent = self._recent[client]
            while recent and recent[0] <= now - 1.0:
                recent.popleft()
            if len(recent) >= self.rate_limit:
                self.throttled_count += 1
                return 1
            recent.append(now)
        return 0

    def _route(self, path, query):
        parts = [urllib.parse.unquote(p) for p in path.strip('/').split('/')]
        if parts[:3] != ['api', 'v1', 'repository']:
            return _error(404, 'not_found', 'Not Found')
        rest = parts[3:]
        if not rest:
            return self._list_repositories(query)
        # strip('/') made '.../tag/' and '.../tag' the same; Quay itself redirects the latter to the former.
        if len(rest) >= 3 and rest[-1] == 'tag':
            return self._list_tags(rest[0], '/'.join(rest[1:-1]), query)
        if len(rest) >= 2:
            return self._get_repository(rest[0], '/'.join(rest[1:]), query)
        return _error(404, 'not_found', 'Not Found')

    def _repo_dict(self, namespace, repo):
        return {'namespace': namespace, 'name': repo['name'], 'description': repo['description'], 'is_public': True,
                'kind': 'image', 'state': 'NORMAL', 'quota': None}

    def _list_repositories(self, query):
        namespace = query.get('namespace')
        if not namespace and not _truthy(query.get('starred', '')) and not _truthy(query.get('public', '')):
            return _error(400, 'invalid_request', 'namespace, starred or public are required for this API call')
        if not namespace:
            # Starred needs a user and "every public repository" is out of scope for a stand-in.
            return 200, {'repositories': []}
        repos = self.backend.repositories(namespace)
        start = _decode_token(query['next_page']) if query.get('next_page') else 0
        page = repos[start:start + self.page_size]
        result = {'repositories': [self._repo_dict(namespace, r) for r in page]}
        if _truthy(query.get('last_modified', '')):
            for item in result['repositories']:
                item['last_modified'] = self.backend.start_ts
        if _truthy(query.get('popularity', '')):
            for item in result['repositories']:
                item['popularity'] = 0.0
        if start + self.page_size < len(repos):
            result['next_page'] = _encode_token(start + self.page_size)
        return 200, result

    def _get_repository(self, namespace, name, query):
        repo = self.backend.repository(namespace, name)
        if repo is None:
            return _error(404, 'not_found', 'Not Found')
        result = self._repo_dict(namespace, repo)
        del result['quota']
        result.update({'is_organization': True, 'is_starred': False, 'status_token': '', 'trust_enabled': False,
                       'tag_expiration_s': TAG_EXPIRATION_S, 'is_free_account': True, 'can_write': False,
                       'can_admin': False})
        if _truthy(query.get('includeTags', 'true')):
            tags = {}
            for tag in self.backend.tag_names(namespace, name)[:500]:
                info = self.backend.tag(namespace, name, tag)
                if info is not None:
                    tags[tag] = {'name': tag, 'size': info['size'], 'last_modified': _format_date(info['start_ts']),
                                 'manifest_digest': info['manifest_digest']}
            result['tags'] = tags
        return 200, result

    def _list_tags(self, namespace, name, query):
        if self.backend.repository(namespace, name) is None:
            return _error(404, 'not_found', 'Not Found')
        try:
            page = max(1, int(query.get('page', 1)))
            limit = min(100, max(1, int(query.get('limit', 50))))
        except ValueError:
            return _error(400, 'invalid_request', 'page and limit must be integers')
        names = self.backend.tag_names(namespace, name)
        specific = query.get('specificTag')
        if specific:
            names = [n for n in names if n == specific]
        window = names[(page - 1) * limit:page * limit + 1]
        tags = []
        for tag in window[:limit]:
            info = self.backend.tag(namespace, name, tag)
            if info is None:
                continue
            tags.append({'name': tag, 'reversion': False, 'start_ts': info['start_ts'],
                         'manifest_digest': info['manifest_digest'], 'is_manifest_list': info['is_manifest_list'],
                         'size': info['size'], 'last_modified': _format_date(info['start_ts'])})
        return 200, {'tags': tags, 'page': page, 'has_additional': len(window) > limit}


def main(argv=None):
    parser = argparse.ArgumentParser(description='Local stand-in for the Quay API v1 (tests and benchmarks only).')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--registry', help='registry base URL, e.g. http://127.0.0.1:5000')
    source.add_argument('--data', help='static JSON file {org: {repo: {description, tags}}}')
    parser.add_argument('--port', type=int, default=0, help='port on 127.0.0.1 (default: a free one)')
    parser.add_argument('--token', help='require Authorization: Bearer TOKEN')
    parser.add_argument('--delay-ms', type=float, default=0, help='added delay per request')
    parser.add_argument('--page-size', type=int, default=100, help='repositories per page (default 100)')
    parser.add_argument('--rate-limit', type=float, default=None, help='requests per second per client, then 429')
    parser.add_argument('--throttle-every', type=int, default=None, metavar='N',
                        help='answer every Nth request 429 with Retry-After: 0')
    args = parser.parse_args(argv)
    data = None
    if args.data:
        with open(args.data) as f:
            data = json.load(f)
    standin = QuayStandin(registry_url=args.registry, data=data, delay_ms=args.delay_ms, token=args.token,
                          page_size=args.page_size, rate_limit=args.rate_limit, port=args.port,
                          throttle_every=args.throttle_every).start()
    print(f'listening {standin.url}', flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    standin.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
