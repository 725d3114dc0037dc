"""A stand-in for a registry with the OCI 1.1 referrers API, in front of a real docker-registry, for tests.

docker-registry 2.8 (the Debian package the tests run) has no referrers API: ``GET /v2/<name>/referrers/<digest>``
is a 404 there, and a manifest PUT with a ``subject`` gets no ``OCI-Subject`` answer. ReferrersStandIn sits in
front of it (it is a tools.delayproxy.FaultProxy, so every other request passes through unchanged, faults included)
and adds what the distribution spec's referrers sections ask of a registry:

- a manifest PUT through it whose body has a ``subject`` is relayed; when the registry stores it (201), the
  stand-in records a descriptor of it for (repository, subject digest) and adds ``OCI-Subject: <subject digest>``
  to the answer. The descriptor holds the manifest's media type (its Content-Type), digest and size, its
  ``artifactType`` (a manifest without one gets its config's media type, an index none) and its annotations;
- ``GET /v2/<name>/referrers/<digest>`` answers an OCI image index (Content-Type
  ``application/vnd.oci.image.index.v1+json``) of the descriptors recorded for that subject, in the order they
  were pushed; an unknown subject gets an empty index, never a 404; a digest that breaks the grammar a 400;
- ``?artifactType=T`` keeps the descriptors of that type and the answer says ``OCI-Filters-Applied: artifactType``;
- at most ``page_size`` descriptors a page; a page with more after it carries
  ``Link: </v2/<name>/referrers/<digest>?page=<k>>; rel="next"`` (the filter carried along);
- a manifest DELETEd by digest through it leaves the lists it was in.

Only what was PUT through the stand-in is known (seed referrers through it). It does not check credentials: the
registries it fronts in tests have none. ``listed`` maps (repository, subject) to the descriptors recorded and
``served`` lists (repository, subject, artifactType filter, page, digests served) per referrers answer.
"""

import hashlib
import json
import re
import urllib.parse

try:
    from tools.delayproxy import HOP_BY_HOP, FaultProxy, Received, _FaultHandler
except ImportError:  # run from tools/
    from delayproxy import HOP_BY_HOP, FaultProxy, Received, _FaultHandler

INDEX_TYPE = 'application/vnd.oci.image.index.v1+json'
INDEX_TYPES = (INDEX_TYPE, 'application/vnd.docker.distribution.manifest.list.v2+json')
REFERRERS_PATH = re.compile(r'^/v2/(?P<name>.+)/referrers/(?P<digest>[^/]*)$')
MANIFEST_PATH = re.compile(r'^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$')
DIGEST = re.compile(r'^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$')
MAX_MANIFEST = 4 * 1024 * 1024


def descriptor_of(body, media_type):
    """The referrers-list descriptor of a manifest or index (bytes, as pushed), or None when it has no subject.

    (subject digest, descriptor) as the distribution spec's "Listing Referrers" asks for it.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return None
    subject = document.get('subject') if isinstance(document, dict) else None
    if not isinstance(subject, dict) or not isinstance(subject.get('digest'), str):
        return None
    media_type = media_type or document.get('mediaType')
    descriptor = {'mediaType': media_type, 'digest': 'sha256:' + hashlib.sha256(body).hexdigest(),
                  'size': len(body)}
    artifact_type = document.get('artifactType')
    if not artifact_type and media_type not in INDEX_TYPES:
        config = document.get('config')
        artifact_type = config.get('mediaType') if isinstance(config, dict) else None
    if artifact_type:
        descriptor['artifactType'] = artifact_type
    if document.get('annotations'):
        descriptor['annotations'] = document['annotations']
    return subject['digest'], descriptor


class _ReferrersHandler(_FaultHandler):

    def _proxy(self):
        path, _, query = self.path.partition('?')
        referrers = REFERRERS_PATH.match(path)
        if self.command == 'GET' and referrers is not None:
            return self._referrers(referrers.group('name'), referrers.group('digest'), query)
        manifest = MANIFEST_PATH.match(path)
        if manifest is not None and self.command == 'PUT':
            return self._put_manifest(manifest.group('name'))
        if manifest is not None and self.command == 'DELETE' and DIGEST.match(manifest.group('reference')):
            self.server.owner.forget(manifest.group('name'), manifest.group('reference'))
        return super()._proxy()

    def _answer(self, status, body, headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _referrers(self, name, digest, query):
        owner = self.server.owner
        owner._received(Received(self.scheme, self.command, self.path, dict(self.headers.items())))
        if not DIGEST.match(digest):
            owner._record(self.command, self.path, 400)
            body = json.dumps({'errors': [{'code': 'DIGEST_INVALID', 'message': 'invalid digest'}]}).encode()
            return self._answer(400, body, [('Content-Type', 'application/json')])
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        entries = owner.referrers_of(name, digest)
        headers = [('Content-Type', INDEX_TYPE)]
        wanted = params.get('artifactType')
        if wanted:
            entries = [e for e in entries if e.get('artifactType') == wanted]
            headers.append(('OCI-Filters-Applied', 'artifactType'))
        page = int(params['page']) if params.get('page', '').isdigit() else 0
        size = owner.page_size
        served = entries[page * size:(page + 1) * size]
        if (page + 1) * size < len(entries):
            following = {'page': str(page + 1)}
            if wanted:
                following['artifactType'] = wanted
            headers.append(('Link', '<%s?%s>; rel="next"' % (path_of(name, digest),
                                                             urllib.parse.urlencode(following))))
        owner.record_served(name, digest, wanted, page, [e['digest'] for e in served])
        owner._record(self.command, self.path, 200)
        body = json.dumps({'schemaVersion': 2, 'mediaType': INDEX_TYPE, 'manifests': served}).encode()
        self._answer(200, body, headers)

    def _put_manifest(self, name):
        owner = self.server.owner
        owner._received(Received(self.scheme, self.command, self.path, dict(self.headers.items())))
        body = b''.join(self._request_body() or ())
        if len(body) > MAX_MANIFEST:
            owner._record(self.command, self.path, 413)
            return self._answer(413, b'')
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in HOP_BY_HOP | {'host', 'expect', 'content-length', 'transfer-encoding'}}
        headers['Host'] = owner.target_netloc
        headers['Content-Length'] = str(len(body))
        upstream = self.upstream_connection()
        try:
            try:
                upstream.request('PUT', self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            except OSError as exc:
                owner._record(self.command, self.path, 502)
                return self._answer(502, ('upstream: %s' % exc).encode())
            answer = [(k, owner._rewrite_location(v) if k.lower() == 'location' else v)
                      for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP | {'content-length'}]
            if response.status == 201:
                found = descriptor_of(body, self.headers.get('Content-Type', '').split(';')[0].strip())
                if found is not None:
                    owner.record(name, *found)
                    answer.append(('OCI-Subject', found[0]))
            owner._record(self.command, self.path, response.status)
            self.send_response_only(response.status, response.reason)
            for key, value in answer:
                self.send_header(key, value)
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            upstream.close()


def path_of(name, digest):
    return '/v2/%s/referrers/%s' % (name, digest)


class ReferrersStandIn(FaultProxy):
    """FaultProxy(target_url, ...) with the referrers API (module docstring), `page_size` descriptors a page."""

    handler = _ReferrersHandler
    thread_name = 'referrers-standin'

    def __init__(self, target_url, page_size=10, **kwargs):
        super().__init__(target_url, **kwargs)
        if page_size < 1:
            raise ValueError('page_size must be at least 1')
        self.page_size = page_size
        self.listed = {}
        self.served = []

    def record(self, name, subject, descriptor):
        with self._lock:
            entries = self.listed.setdefault((name, subject), [])
            if all(e['digest'] != descriptor['digest'] for e in entries):
                entries.append(descriptor)

    def forget(self, name, digest):
        with self._lock:
            for key, entries in self.listed.items():
                if key[0] == name:
                    entries[:] = [e for e in entries if e['digest'] != digest]

    def referrers_of(self, name, subject):
        with self._lock:
            return list(self.listed.get((name, subject), ()))

    def record_served(self, name, subject, artifact_type, page, digests):
        with self._lock:
            self.served.append((name, subject, artifact_type, page, list(digests)))
