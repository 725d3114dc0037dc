"""A reverse proxy that pages a real registry's tag lists as the distribution spec says, for tests of Link paging.

docker-registry 2.8 (the Debian package the tests run) answers ``GET /v2/<name>/tags/list`` with every tag at
once and ignores ``n``. TagPagingProxy sits in front of it (it is a tools.delayproxy.FaultProxy, so every other
request passes through unchanged, faults included) and answers tag lists itself from the registry's full list,
following the spec's "Listing Tags" section:

- tags in lexical order; ``n`` is the most a page holds (``page_size`` when the client sends none, as registries
  that page by default do); ``last`` starts the page after that tag;
- a page with more after it carries ``Link: </v2/<name>/tags/list?n=<n>&last=<last tag of the page>>;
  rel="next"``, the last page none;
- any answer of the registry other than 200 (404 for an unknown repository, 401) is passed on as it is (asked
  again through the plain relay, so its headers come too).

``pages`` lists (name, n, last, tags served) for every page answered, so a test can see the paging happened.
"""

import http.client
import json
import re
import urllib.parse

try:
    from tools.delayproxy import HOP_BY_HOP, FaultProxy, Received, _FaultHandler
except ImportError:  # run from tools/
    from delayproxy import HOP_BY_HOP, FaultProxy, Received, _FaultHandler

TAGS_PATH = re.compile(r'^/v2/(?P<name>.+)/tags/list$')


class _PagingHandler(_FaultHandler):

    def _proxy(self):
        path, _, query = self.path.partition('?')
        match = TAGS_PATH.match(path)
        if self.command != 'GET' or match is None:
            return super()._proxy()
        owner = self.server.owner
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        status, body, _ = owner.upstream_tags(path, self.headers)
        if status != 200:
            return super()._proxy()         # relayed exactly as the registry answers it (headers included)
        owner._received(Received(self.scheme, self.command, self.path, dict(self.headers.items())))
        listed = json.loads(body)
        tags = sorted(listed.get('tags') or [])
        size = int(params['n']) if params.get('n', '').isdigit() else owner.page_size
        last = params.get('last')
        start = 0 if last is None else next((i for i, tag in enumerate(tags) if tag > last), len(tags))
        page = tags[start:start + size]
        headers = {}
        if start + size < len(tags) and page:
            following = urllib.parse.urlencode({'n': size, 'last': page[-1]})
            headers['Link'] = '<%s?%s>; rel="next"' % (path, following)
        owner.record_page(match.group('name'), size, last, page)
        owner._record(self.command, self.path, 200)
        data = json.dumps({'name': listed.get('name'), 'tags': page}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class TagPagingProxy(FaultProxy):
    """FaultProxy(target_url, ...) that pages tag lists (module docstring), `page_size` tags a page by default."""

    handler = _PagingHandler
    thread_name = 'tagpager'

    def __init__(self, target_url, page_size=2, **kwargs):
        super().__init__(target_url, **kwargs)
        if page_size < 1:
            raise ValueError('page_size must be at least 1')
        self.page_size = page_size
        self.pages = []

    def upstream_tags(self, path, request_headers):
        """(status, body, content type) of the registry's own answer to GET path (no query: the whole list)."""
        headers = {k: v for k, v in request_headers.items() if k.lower() not in HOP_BY_HOP | {'host'}}
        headers['Host'] = self.target_netloc
        if self.upstream_tls is not None:
            upstream = http.client.HTTPSConnection(self.target_host, self.target_port, timeout=60,
                                                   context=self.upstream_tls)
        else:
            upstream = http.client.HTTPConnection(self.target_host, self.target_port, timeout=60)
        try:
            upstream.request('GET', path, headers=headers)
            response = upstream.getresponse()
            return response.status, response.read(), response.getheader('Content-Type')
        finally:
            upstream.close()

    def record_page(self, name, size, last, tags):
        with self._lock:
            self.pages.append((name, size, last, list(tags)))
