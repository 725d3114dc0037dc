"""The OCI distribution protocol for one registry host: manifests, blobs, uploads, tags and the catalog.

Everything goes through the run's HttpClient (pooled connections, retries, rate limit) and the host's shared
Authenticator. This module knows nothing about tarballs or directories: it moves manifests and blob bytes.
"""

import io
import logging
import os
import re
import threading
import urllib.parse

import httpx

from occystrap import cancel, oci, streams
from occystrap.errors import CorruptImageError, DigestMismatchError, RegistryError
from occystrap.registry import auth
from occystrap.registry.http import (DOCUMENT_LIMIT, ERROR_BODY_LIMIT, LISTING_LIMIT, MAX_REDIRECTS,
                                     REDIRECT_STATUSES, ConnectionFailed, RetryPolicy, host_of, origin, read_capped,
                                     release, speaks_tls, unusable_redirect, usable_url)

LOG = logging.getLogger(__name__)

ALL_MANIFEST_TYPES = oci.ALL_MANIFEST_TYPES
IMAGE_MANIFEST_TYPES = oci.IMAGE_MANIFEST_TYPES
MAX_MANIFEST_BYTES = DOCUMENT_LIMIT
MAX_CONFIG_BYTES = 64 * 1024 * 1024
MAX_PAGES = 10000                     # pages of tags or catalog followed before the registry is thought to loop
MONOLITHIC_MAX = 128 * 1024 * 1024    # blobs up to this size go up in one PUT; larger ones in PATCH chunks
UPLOAD_CHUNK = 32 * 1024 * 1024
CATALOG_SCOPE = 'registry:catalog:*'
# What Go's net/http and nginx answer a plain-HTTP request sent to their TLS port.
PLAIN_TO_TLS_TEXTS = (b'Client sent an HTTP request to an HTTPS server',
                      b'The plain HTTP request was sent to HTTPS port')
_RANGE_RE = re.compile(r'^(?:bytes=)?(\d+)-(-?\d+)$')


def describe_reference(name, reference):
    """'name:tag' or 'name@sha256:...' as users write it."""
    if reference and ':' in reference:
        return '%s@%s' % (name, reference)
    return '%s:%s' % (name, reference)


def is_digest(reference):
    return oci.is_digest(reference)


def _error_body(response):
    """The (capped) body of an error answer, or b'' when there is none to read: a HEAD answer, a body already
    closed unread, one over ERROR_BODY_LIMIT, or one whose reading fails in any way."""
    try:
        return response.content
    except httpx.ResponseNotRead:
        pass
    if response.is_closed or response.request.method == 'HEAD':
        return b''
    try:
        return read_capped(response, ERROR_BODY_LIMIT, 'an error answer')
    except (RegistryError, httpx.HTTPError, httpx.StreamError, OSError, ValueError):
        return b''
    finally:
        response.close()


def _error_detail(response, body=None):
    """'CODE: message' from a registry's JSON error body, or ''."""
    try:
        body = oci.load_json(_error_body(response) if body is None else body, 'an error answer')
    except CorruptImageError:
        return ''
    errors = body.get('errors') if isinstance(body, dict) else None
    if not errors or not isinstance(errors, list) or not isinstance(errors[0], dict):
        return ''
    first = errors[0]
    text = ': '.join(str(first[k]) for k in ('code', 'message') if first.get(k))
    return ' '.join(text.split())[:300]


def _with_query(url, **params):
    """Add query parameters to a URL that may already carry some (upload locations keep state there)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _read_exactly(stream, size):
    """Read up to `size` bytes, fewer only at end of stream."""
    parts = []
    remaining = size
    while remaining > 0:
        data = stream.read(min(remaining, streams.CHUNK))
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b''.join(parts)


class _Source:
    """What upload_blob reads from: a path, bytes, a callable returning a fresh stream, or a stream."""

    def __init__(self, source):
        self.source = source
        self.start = None
        if hasattr(source, 'read') and hasattr(source, 'seek'):
            try:
                self.start = source.tell()
            except (OSError, ValueError):
                self.start = None

    @property
    def repeatable(self):
        return not hasattr(self.source, 'read') or self.start is not None

    def size(self):
        if isinstance(self.source, (str, os.PathLike)):
            return os.path.getsize(self.source)
        if isinstance(self.source, (bytes, bytearray, memoryview)):
            return len(self.source)
        return None

    def open(self):
        if isinstance(self.source, (str, os.PathLike)):
            return open(self.source, 'rb')
        if isinstance(self.source, (bytes, bytearray, memoryview)):
            return io.BytesIO(self.source)
        if callable(self.source):
            return self.source()
        if self.start is not None:
            self.source.seek(self.start)
        return _Unclosed(self.source)


class _Unclosed:
    """A caller's stream that our upload reads but must not close."""

    def __init__(self, raw):
        self.raw = raw

    def read(self, size=-1):
        return self.raw.read(size)

    def close(self):
        pass


class _Retryable(Exception):
    """An upload step failed in a way that a fresh attempt may cure."""


class RegistryClient:
    """The distribution API of one registry host (`host[:port]`), shared safely between threads."""

    def __init__(self, http, host, insecure=False, username=None, password=None, monolithic_max=MONOLITHIC_MAX,
                 chunk_size=UPLOAD_CHUNK, authenticators=None, role='input', repository=None, tls_verify=True):
        """`authenticators` is the run's auth.Authenticators (RunContext.authenticators); without it this client
        keeps tokens to itself. Credentials are `username`/`password` (the URI's), else those of the run for this
        side (`role` 'input' or 'output') and `repository` (registry/credentials.py has the order).
        `tls_verify=False` speaks TLS without verifying the registry's certificate."""
        self.http = http
        self.host = host
        self.base = '%s://%s' % (http.scheme(insecure), host)
        self.tls_verify = bool(tls_verify)
        lookup = auth.credential_lookup(host, username, password, http.settings, role, repository)
        self.auth = (authenticators or auth.Authenticators(http)).get(host, lookup=lookup,
                                                                      tls_verify=self.tls_verify)
        self.monolithic_max = monolithic_max
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._pending_uploads = {}    # (name, digest) -> upload location left open by a mount that did not happen
        self._open_uploads = {}       # token -> (location, name, what) of every upload session in progress
        self.resumes = 0              # blob downloads resumed with a Range request, for tests and --verbose

    def __repr__(self):
        return '<RegistryClient %s>' % self.base

    # --- plumbing

    def _url(self, path):
        return self.base + path

    def _own(self, url):
        """True when `url` has this registry's origin (scheme, host and port): only then do credentials go along."""
        return origin(url) == origin(self.base)

    @property
    def plain(self):
        """True when the user asked for plain HTTP to this registry (--insecure, or ?insecure=true on its URI)."""
        return self.base.startswith('http://')

    def _follow(self, response, location, what, kind='redirected'):
        """The URL a redirect (or a Link) leads to, refused unless it is a usable http(s) URL and, for a TLS
        registry, unless it stays on TLS."""
        try:
            target = urllib.parse.urljoin(str(response.request.url), location)
        except ValueError:
            target = None
        if target is None or not usable_url(target):
            if kind == 'redirected':
                raise unusable_redirect('%s from registry %s' % (what, self.host))
            raise RegistryError('registry %s %s %s to an unusable URL (not http or https with a host)'
                                % (self.host, kind, what))
        if not self.plain and urllib.parse.urlsplit(target).scheme.lower() == 'http':
            raise RegistryError('registry %s %s %s to plain HTTP; refusing to leave TLS (use ?insecure=true on its '
                                'URI only if this registry is meant to be reached over plain HTTP)'
                                % (self.host, kind, what))
        return target

    def _upload_location(self, response, what):
        """Where an upload goes on, from the answer's Location: checked as a redirect is."""
        return self._follow(response, response.headers['Location'], what, 'moved the upload of')

    def _send(self, method, url, scopes, what, headers=None, content=None, stream=False, retry=True, follow=False,
              params=None, transfer=False, limit=ERROR_BODY_LIMIT):
        """An authenticated request; 401s are answered by authenticating, redirects followed when `follow`.

        `transfer=True` for blob downloads and uploads (see HttpClient.request).

        Authorization goes only to this registry's own origin (scheme, host, port), never to another one a redirect
        leads to; redirects to plain HTTP from a TLS registry and more than MAX_REDIRECTS are refused. Unless
        `stream`, the body is read, at most `limit` bytes. Returns the response whatever its status (except an
        unresolvable 401, which raises AuthenticationError).
        """
        challenges = 0
        redirects = 0
        while True:
            sent = dict(headers or {})
            own = self._own(url)
            if own:
                sent.update(self.auth.headers(scopes))
            try:
                response = self.http.request(method, url, headers=sent, content=content, stream=stream, retry=retry,
                                             params=params, transfer=transfer, limit=limit,
                                             what='%s from registry %s' % (what, self.host), tls_verify=self.tls_verify)
            except ConnectionFailed as e:
                # A plain-HTTP request that a TLS port could not parse breaks the protocol instead of answering 400.
                if self.plain and isinstance(e.__context__, httpx.RemoteProtocolError) and speaks_tls(host_of(url)):
                    raise self._speaks_tls(what) from None
                raise
            if response.status_code == 401 and own and challenges < 2:
                release(response)
                challenges += 1
                self.auth.challenged(response, scopes, sent)
                continue
            if follow and response.status_code in REDIRECT_STATUSES and response.headers.get('Location'):
                release(response)
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise RegistryError('registry %s redirected %s more than %d times'
                                        % (self.host, what, MAX_REDIRECTS))
                url = self._follow(response, response.headers['Location'], what)
                params = None
                LOG.debug('%s redirected to %s', what, host_of(url))
                continue
            return response

    def _speaks_tls(self, what):
        if self.http.settings.insecure:
            how = ('--insecure asks every registry for plain HTTP: leave it out, and put ?insecure=true only on the '
                   'URI of a registry that needs plain HTTP')
        else:
            how = 'leave ?insecure=true off its URI'
        return RegistryError('registry %s speaks TLS (HTTPS) and refused %s over plain HTTP; %s'
                             % (self.host, what, how), status=400)

    def _error(self, response, what):
        """The exception for an unexpected answer, naming the registry, the status and the registry's own reason.

        The body is read safely (see _error_body); a 400 to plain HTTP from a TLS port says how to ask for TLS.
        """
        body = _error_body(response)
        response.close()
        status = response.status_code
        if status == 400 and self.plain:
            if any(text in body for text in PLAIN_TO_TLS_TEXTS) or (not body and speaks_tls(self.host)):
                return self._speaks_tls(what)
        detail = _error_detail(response, body)
        suffix = ' (%s)' % detail if detail else ''
        if status == 401:
            if self.auth.has_credentials:
                return auth.AuthenticationError('registry %s refused the credentials for %s%s'
                                                % (self.host, what, suffix), status=status)
            return self.auth.needs_credentials(' for %s' % what, suffix)
        if status == 403:
            return auth.AuthenticationError('registry %s denied access to %s%s' % (self.host, what, suffix),
                                            status=status)
        return RegistryError('registry %s answered %d for %s%s' % (self.host, status, what, suffix), status=status)

    @staticmethod
    def _pull(name):
        return (auth.repository_scope(name, 'pull'),)

    @staticmethod
    def _push(name):
        return (auth.repository_scope(name, 'pull,push'),)

    # --- reading

    def ping(self):
        """GET /v2/ (authenticating if asked to); True when the registry speaks the v2 API."""
        response = self._send('GET', self._url('/v2/'), (), 'the API root')
        if response.status_code != 200:
            raise self._error(response, 'the API root')
        response.close()
        return True

    def _get_manifest(self, name, reference, accept):
        what = describe_reference(name, reference)
        url = self._url('/v2/%s/manifests/%s' % (name, reference))
        response = self._send('GET', url, self._pull(name), 'the manifest of %s' % what,
                              headers={'Accept': ', '.join(accept)}, limit=MAX_MANIFEST_BYTES)
        if response.status_code != 200:
            raise self._error(response, what)
        data = response.content
        digest = oci.digest_of(data)
        if is_digest(reference):
            algorithm = reference.split(':', 1)[0]
            actual = oci.digest_of(data, algorithm)
            if actual != reference:
                raise DigestMismatchError('manifest %s' % what, reference, actual)
        header = response.headers.get('Docker-Content-Digest')
        if header and header.split(':', 1)[0] in ('sha256', 'sha512'):
            actual = oci.digest_of(data, header.split(':', 1)[0])
            if actual != header:
                raise DigestMismatchError('manifest %s (Docker-Content-Digest)' % what, header, actual)
        source = 'manifest %s on registry %s' % (what, self.host)
        document = oci.load_json_object(data, source)
        media_type = response.headers.get('Content-Type', '').split(';', 1)[0].strip()
        if media_type not in ALL_MANIFEST_TYPES:
            declared = document.get('mediaType')
            media_type = declared if isinstance(declared, str) and declared else media_type
        if document.get('schemaVersion') == 1 or media_type in oci.MEDIA_SCHEMA1:
            raise RegistryError('%s on registry %s is a schema 1 manifest, which is not supported'
                                % (what, self.host))
        if media_type not in ALL_MANIFEST_TYPES:
            # An OCI manifest may omit mediaType; its shape tells which it is.
            media_type = oci.MEDIA_OCI_INDEX if oci.is_index_document(None, document) else oci.MEDIA_OCI_MANIFEST
        if media_type in oci.MANIFEST_LIST_TYPES:
            parsed = oci.Index.parse(data, media_type, source)
        else:
            parsed = oci.Manifest.parse(data, media_type, source)
        return data, media_type, digest, parsed

    def get_manifest(self, name, reference, accept=ALL_MANIFEST_TYPES):
        """(bytes, media type, digest) of a manifest; the digest is verified when `reference` is one.

        The Docker-Content-Digest header is checked too when the registry sends it.
        """
        data, media_type, digest, _ = self._get_manifest(name, reference, accept)
        return data, media_type, digest

    def fetch_manifest(self, name, reference, accept=ALL_MANIFEST_TYPES):
        """(bytes, media type, digest, oci.Manifest or oci.Index) of what a reference names, verified as
        get_manifest verifies it; an index is not followed."""
        return self._get_manifest(name, reference, accept)

    def manifest_digest(self, name, reference):
        """The digest the registry holds under a tag or digest (a HEAD request), or None when it has none.

        Only a sha256 Docker-Content-Digest is believed; a registry that sends none answers None (treated as
        'not known to be there', so the copy goes ahead).
        """
        return self.head_manifest(name, reference)[1]

    def head_manifest(self, name, reference):
        """(found, digest) for a tag or digest, from one HEAD request: `found` is False when the registry answers
        404, and `digest` is the sha256 Docker-Content-Digest it sent, or None when it sent none (or no valid one).
        """
        what = describe_reference(name, reference)
        response = self._send('HEAD', self._url('/v2/%s/manifests/%s' % (name, reference)), self._pull(name), what,
                              headers={'Accept': ', '.join(ALL_MANIFEST_TYPES)})
        response.close()
        if response.status_code == 404:
            return False, None
        if response.status_code != 200:
            raise self._error(response, what)
        header = response.headers.get('Docker-Content-Digest') or ''
        return True, header if header.startswith('sha256:') and oci.is_digest(header) else None

    def repository_exists(self, name):
        """False when the registry says it has no repository `name` (its tag list answers 404), else True.

        One small request (a tag list of at most one entry). Any answer but a 404 counts as 'may exist', so a
        caller only ever skips work it could not have needed.
        """
        what = 'the tags of %s' % name
        response = self._send('GET', _with_query(self._url('/v2/%s/tags/list' % name), n=1), self._pull(name), what,
                              limit=LISTING_LIMIT)
        response.close()
        return response.status_code != 404

    def resolve_image(self, name, reference, platform=None):
        """The image manifest for a reference: (bytes, media type, digest, oci.Manifest).

        A manifest list or OCI index is followed to the entry for `platform` ((os, architecture, variant), default
        from the settings), matched by oci.Platform's one rule; when none matches, the error lists the platforms
        there are.
        """
        if platform is None:
            settings = self.http.settings
            platform = (settings.os, settings.architecture, settings.variant)
        os_name, architecture, variant = platform
        data, media_type, digest, document = self._get_manifest(name, reference, ALL_MANIFEST_TYPES)
        if not isinstance(document, oci.Index):
            return data, media_type, digest, document
        entry = document.select(oci.Platform(os_name, architecture, variant or ''))
        if entry is None:
            wanted = '/'.join(p for p in (os_name, architecture, variant) if p)
            raise RegistryError('%s on registry %s has no %s image; available: %s'
                                % (describe_reference(name, reference), self.host, wanted,
                                   ', '.join(document.platforms()) or 'none'))
        data, media_type, digest, document = self._get_manifest(name, entry.digest, IMAGE_MANIFEST_TYPES)
        if isinstance(document, oci.Index):
            raise CorruptImageError('%s on registry %s nests one index in another'
                                    % (describe_reference(name, reference), self.host))
        return data, media_type, digest, document

    def _blob_response(self, name, digest, offset=0, method='GET'):
        what = 'blob %s in %s' % (digest, name)
        headers = {'Range': 'bytes=%d-' % offset} if offset else None
        response = self._send(method, self._url('/v2/%s/blobs/%s' % (name, digest)), self._pull(name), what,
                              headers=headers, stream=True, follow=True, transfer=True)
        return response, what

    def get_blob_bytes(self, name, digest, max_size=MAX_CONFIG_BYTES):
        """A small blob (an image config) in memory, verified against its digest."""
        response, what = self._blob_response(name, digest)
        try:
            if response.status_code != 200:
                raise self._error(response, what)
            length = response.headers.get('Content-Length', '').strip()
            if length.isdigit() and int(length) > max_size:
                raise RegistryError('%s on registry %s is larger than %d bytes' % (what, self.host, max_size))
            parts, total = [], 0
            for chunk in response.iter_raw(streams.CHUNK):
                total += len(chunk)
                if total > max_size:
                    raise RegistryError('%s on registry %s is larger than %d bytes' % (what, self.host, max_size))
                parts.append(chunk)
        except httpx.TransportError as e:
            raise ConnectionFailed('download of %s from %s broke off: %s' % (what, self.host, e))
        finally:
            response.close()
        data = b''.join(parts)
        actual = oci.digest_of(data, digest.split(':', 1)[0])
        if actual != digest:
            raise DigestMismatchError(what, digest, actual)
        return data

    def open_blob(self, name, digest, size=None, on_bytes=None):
        """A stream of a blob's raw bytes that resumes with a Range request when the connection breaks.

        Nothing is verified here (wrap it in a HashingReader); `on_bytes(n)` is called for every chunk received.
        """
        return BlobReader(self, name, digest, size, on_bytes)

    def blob_exists(self, name, digest):
        """The blob's size when the repository has it, else None (a HEAD request)."""
        response, what = self._blob_response(name, digest, method='HEAD')
        release(response)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._error(response, what)
        return int(response.headers.get('Content-Length') or 0)

    def list_tags(self, name, page_size=None):
        """Every tag of a repository, following Link pagination."""
        return self._paginate('/v2/%s/tags/list' % name, self._pull(name), 'tags', 'the tags of %s' % name,
                              page_size)

    def catalog(self, page_size=None):
        """Every repository the registry lists in /v2/_catalog, following Link pagination."""
        return self._paginate('/v2/_catalog', (CATALOG_SCOPE,), 'repositories', 'the catalog', page_size)

    def _paginate(self, path, scopes, key, what, page_size):
        url = self._url(path)
        params = {'n': str(page_size)} if page_size else None
        found = []
        seen = set()
        while url:
            response = self._send('GET', url, scopes, what, params=params, limit=LISTING_LIMIT)
            if response.status_code != 200:
                raise self._error(response, what)
            try:
                page = response.json().get(key) or []
            except (ValueError, AttributeError, RecursionError):    # RecursionError: JSON nested too deeply
                raise RegistryError('registry %s answered %s with something that is not JSON' % (self.host, what))
            if not isinstance(page, list):
                raise RegistryError('registry %s answered %s without a list of %s' % (self.host, what, key))
            found.extend(page)
            url = self._next_page(response, what, seen)
            params = None
        return found

    def _next_page(self, response, what, seen):
        """The URL of the page after `response` (its Link rel="next", checked as a redirect would be), or None;
        `seen` (the pages asked for so far) catches loops and more than MAX_PAGES pages."""
        following = response.links.get('next', {}).get('url')
        url = self._follow(response, following, what, 'paginated') if following else None
        if url in seen:
            raise RegistryError('registry %s paginates %s in a loop' % (self.host, what))
        if len(seen) >= MAX_PAGES:
            raise RegistryError('registry %s paginates %s beyond %d pages' % (self.host, what, MAX_PAGES))
        seen.add(url)
        return url

    # --- writing

    def mount_blob(self, name, digest, from_name):
        """Ask the registry to link a blob from another repository; True when it did (no upload needed)."""
        what = 'blob %s in %s' % (digest, name)
        scopes = self._push(name) + self._pull(from_name)
        url = _with_query(self._url('/v2/%s/blobs/uploads/' % name), mount=digest, **{'from': from_name})
        response = self._send('POST', url, scopes, what)
        response.close()
        if response.status_code == 201:
            return True
        if response.status_code == 202 and response.headers.get('Location'):
            # The registry opened an ordinary upload instead; keep it for upload_blob rather than waste it.
            with self._lock:
                self._pending_uploads[(name, digest)] = self._upload_location(response, what)
            return False
        raise self._error(response, what)

    def _start_upload(self, name, what):
        url = self._url('/v2/%s/blobs/uploads/' % name)
        response = self._send('POST', url, self._push(name), what)
        response.close()
        if response.status_code != 202 or not response.headers.get('Location'):
            raise self._error(response, what)
        return self._upload_location(response, what)

    def upload_blob(self, name, digest, source, size=None, on_bytes=None):
        """Upload a blob unless told otherwise; returns its digest as the registry confirmed it.

        `source` is a path, bytes, a callable returning a fresh readable stream, or a readable stream (seekable
        ones can be retried). Blobs of known size up to `monolithic_max` go in one PUT; others in PATCH chunks of
        `chunk_size` with Content-Range, resumed from the registry's upload status after a failure.
        """
        what = 'blob %s in %s' % (digest, name)
        source = _Source(source)
        if size is None:
            size = source.size()
        failures = 0
        while True:
            with self._lock:
                location = self._pending_uploads.pop((name, digest), None)
            if location is None:
                self.http.cancellation.check()
                location = self._start_upload(name, what)
            token = object()
            with self._lock:
                self._open_uploads[token] = (location, name, what)
            try:
                if size is not None and size <= self.monolithic_max:
                    return self._put_monolithic(name, location, digest, source, size, what, on_bytes)
                return self._put_chunked(name, location, digest, source, what, on_bytes)
            except BaseException as e:
                cancellation = self.http.cancellation
                if isinstance(e, cancel.STOPS) or cancellation.cancelled:
                    # Once the request is cut off (its socket shut down): docker-registry will not end a session
                    # that data is still arriving for.
                    if self._forget_upload(token):
                        self.cancel_upload(location, name, what)
                    if isinstance(e, cancel.STOPS):
                        raise
                    raise cancel.Interrupted(cancellation.signum) from None
                if not isinstance(e, (_Retryable, ConnectionFailed)):
                    raise
                failures += 1
                if failures > self.http.retry.retries or not source.repeatable:
                    raise ConnectionFailed('upload of %s to %s failed: %s' % (what, self.host, e))
                waited = self.http.retry.wait(failures - 1)
                LOG.info('upload of %s failed (%s); starting again in %.2fs', what, e, waited)
            finally:
                self._forget_upload(token)

    def _forget_upload(self, token):
        """True when the session was still listed as open (so whoever forgets it is the one to end it)."""
        with self._lock:
            return self._open_uploads.pop(token, None) is not None

    def cancel_open_uploads(self):
        """End (DELETE) every upload session still in progress: a cancelled run's clean-up, from the main thread.

        A worker that unwinds in time ends its own session; this catches those still stuck when the run's grace
        for its workers ran out (a loaded machine), so no session is left open either way.
        """
        with self._lock:
            sessions = list(self._open_uploads.values())
            self._open_uploads.clear()
        for location, name, what in sessions:
            self.cancel_upload(location, name, what)

    def cancel_upload(self, location, name, what):
        """End an upload session the run gives up on (DELETE), so the registry does not keep its partial data.

        Best effort: a registry that does not allow it, or does not answer, keeps the session until it purges it.
        """
        try:
            response = self._send('DELETE', location, self._push(name), what, retry=False)
            response.close()
            LOG.debug('cancelled the upload of %s: %d', what, response.status_code)
        except Exception as e:   # on the way out of a cancelled run: report, never mask the interruption
            LOG.debug('could not cancel the upload of %s: %s', what, e)

    def _body(self, source, on_bytes):
        cancellation = self.http.cancellation

        def produce():
            stream = source.open()
            try:
                while True:
                    if cancellation.cancelled:
                        raise cancel.Interrupted(cancellation.signum)
                    data = stream.read(streams.CHUNK)
                    if not data:
                        return
                    if on_bytes:
                        on_bytes(len(data))
                    yield data
            finally:
                stream.close()
        return produce

    def _finish(self, response, digest, what):
        response.close()
        if response.status_code == 201:
            confirmed = response.headers.get('Docker-Content-Digest') or digest
            if confirmed != digest:
                raise DigestMismatchError('uploaded %s' % what, digest, confirmed)
            return digest
        if RetryPolicy.retryable_status(response.status_code):
            raise _Retryable('registry answered %d' % response.status_code)
        raise self._error(response, what)

    def _put_monolithic(self, name, location, digest, source, size, what, on_bytes):
        headers = {'Content-Type': 'application/octet-stream', 'Content-Length': str(size)}
        response = self._send('PUT', _with_query(location, digest=digest), self._push(name), what, headers=headers,
                              content=self._body(source, on_bytes), retry=False, transfer=True)
        return self._finish(response, digest, what)

    def _put_chunked(self, name, location, digest, source, what, on_bytes):
        stream = source.open()
        offset = 0
        try:
            while True:
                self.http.cancellation.check()
                chunk = _read_exactly(stream, self.chunk_size)
                if not chunk:
                    break
                location = self._patch(name, location, chunk, offset, what)
                offset += len(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
        finally:
            stream.close()
        # The closing PUT carries no data, so repeating it is safe.
        response = self._send('PUT', _with_query(location, digest=digest), self._push(name), what,
                              headers={'Content-Length': '0'})
        return self._finish(response, digest, what)

    def _patch(self, name, location, chunk, offset, what):
        """Send one chunk at `offset`; after a failure ask the registry how much arrived and send the rest."""
        done = 0
        failures = 0
        while done < len(chunk):
            data = chunk[done:]
            headers = {'Content-Type': 'application/octet-stream', 'Content-Length': str(len(data)),
                       'Content-Range': '%d-%d' % (offset + done, offset + len(chunk) - 1)}
            try:
                response = self._send('PATCH', location, self._push(name), what, headers=headers, content=data,
                                      retry=False, transfer=True)
            except ConnectionFailed as e:
                response, reason = None, str(e)
            if response is not None:
                response.close()
                if response.status_code == 202 and response.headers.get('Location'):
                    return self._upload_location(response, what)
                if not (RetryPolicy.retryable_status(response.status_code) or response.status_code == 416):
                    raise self._error(response, what)
                reason = 'registry answered %d' % response.status_code
            failures += 1
            if failures > self.http.retry.retries:
                raise _Retryable(reason)
            self.http.retry.wait(failures - 1)
            location, have = self._upload_status(name, location, what)
            if not offset <= have <= offset + len(chunk):
                raise _Retryable('registry holds %d bytes of the upload, expected %d to %d'
                                 % (have, offset, offset + len(chunk)))
            done = have - offset
        return location

    def _upload_status(self, name, location, what):
        """(location, bytes received) of an upload session."""
        response = self._send('GET', location, self._push(name), what)
        response.close()
        if response.status_code not in (202, 204):
            raise self._error(response, what)
        match = _RANGE_RE.match(response.headers.get('Range', '').strip())
        # 'Range: 0-N' means N+1 bytes arrived; docker-registry also answers '0-0' for an empty upload (and answers
        # '0--1' in older versions), so read '0-0' as empty: a lone byte that arrived would make the digest fail.
        have = int(match.group(2)) + 1 if match and match.group(2) not in ('0', '-1') else 0
        if response.headers.get('Location'):
            location = self._upload_location(response, what)
        return location, max(0, have)

    def put_manifest(self, name, reference, data, media_type):
        """Store a manifest under a tag (or its digest); returns the manifest's digest."""
        return self._put_manifest(name, reference, data, media_type)[0]

    def put_referrer(self, name, data, media_type):
        """Store a manifest that has a `subject` by its digest; returns (digest, subject) where `subject` is the
        registry's OCI-Subject answer (a checked digest), or None when it sent none: then it keeps no referrers
        list of its own and the tag schema must be kept by the client (distribution spec 1.1)."""
        digest, response = self._put_manifest(name, oci.digest_of(data), data, media_type)
        header = (response.headers.get('OCI-Subject') or '').strip()
        if not header:
            return digest, None
        return digest, oci.parse_digest(header, 'the OCI-Subject answer of registry %s' % self.host)

    def _put_manifest(self, name, reference, data, media_type):
        what = describe_reference(name, reference)
        digest = oci.digest_of(data)
        response = self._send('PUT', self._url('/v2/%s/manifests/%s' % (name, reference)), self._push(name), what,
                              headers={'Content-Type': media_type}, content=data)
        if response.status_code not in (200, 201):
            raise self._error(response, what)
        response.close()
        confirmed = response.headers.get('Docker-Content-Digest')
        if confirmed and confirmed.startswith('sha256:') and confirmed != digest:
            raise DigestMismatchError('pushed manifest %s' % what, digest, confirmed)
        return digest, response

    def referrers(self, name, digest, artifact_type=None, most=None):
        """The descriptors of what refers to `digest` in repository `name` (GET /v2/NAME/referrers/DIGEST, Link
        pages followed), or None when the registry answers 404: it has no referrers API, and the caller falls back
        to the referrers tag schema (distribution spec 1.1).

        Each page is read capped at LISTING_LIMIT and must be an OCI image index of manifest descriptors
        (oci.parse_referrers). With `artifact_type` only referrers of that type are asked for, and filtered here
        too unless the registry says it filtered (OCI-Filters-Applied: artifactType). More than `most` referrers
        are an error (a hostile registry's endless pages).
        """
        oci.parse_digest(digest, 'subject of a referrers request')
        what = 'the referrers of %s' % describe_reference(name, digest)
        url = self._url('/v2/%s/referrers/%s' % (name, digest))
        params = {'artifactType': artifact_type} if artifact_type else None
        found, seen = [], set()
        while url:
            response = self._send('GET', url, self._pull(name), what, params=params, limit=LISTING_LIMIT,
                                  headers={'Accept': oci.MEDIA_OCI_INDEX})
            if response.status_code == 404 and not seen:
                response.close()
                return None
            if response.status_code != 200:
                raise self._error(response, what)
            media_type = response.headers.get('Content-Type', '').split(';', 1)[0].strip()
            index = oci.parse_referrers(response.content, media_type, '%s on registry %s' % (what, self.host))
            entries = index.manifests
            applied = [f.strip().lower() for f in response.headers.get('OCI-Filters-Applied', '').split(',')]
            if artifact_type and 'artifacttype' not in applied:
                entries = [d for d in entries if d.artifact_type == artifact_type]
            found.extend(entries)
            if most is not None and len(found) > most:
                raise RegistryError('registry %s lists more than %d referrers for %s' % (self.host, most, what))
            url = self._next_page(response, what, seen)
            params = None
        return found


class BlobReader(streams.ChunkReader):
    """A blob download that resumes where it broke off (Range: bytes=N-), memory bounded to one chunk."""

    def __init__(self, client, name, digest, size, on_bytes):
        self.client = client
        self.name = name
        self.digest = digest
        self.size = size
        self.on_bytes = on_bytes
        self.received = 0
        self._response = None
        self._chunks = None
        self._skip = 0
        self._eof = False
        self._failures = 0
        self._received_at_failure = 0
        self._cancellation = client.http.cancellation
        self._connect()

    def _connect(self):
        self._cancellation.check()
        response, what = self.client._blob_response(self.name, self.digest, self.received)
        if response.status_code == 206 and self.received:
            expected = 'bytes %d-' % self.received
            if not response.headers.get('Content-Range', '').startswith(expected):
                response.close()
                raise RegistryError('registry %s resumed %s at the wrong place (%s)'
                                    % (self.client.host, what, response.headers.get('Content-Range')))
            self._skip = 0
        elif response.status_code == 200:
            self._skip = self.received   # the server ignored Range: drop what we already have
        else:
            raise self.client._error(response, what)
        self._response = response
        self._chunks = response.iter_raw()    # as received, so a break loses nothing already read

    def _resume(self, reason):
        self._close_response()
        if self.received > self._received_at_failure:
            self._failures = 0   # progress since the last break: this is a new problem, not the same one again
        self._received_at_failure = self.received
        self._failures += 1
        retries = self.client.http.retry.retries
        if self._failures > retries:
            raise ConnectionFailed('download of blob %s from %s broke off at byte %d: %s (after %d retries)'
                                   % (self.digest, self.client.host, self.received, reason, retries))
        waited = self.client.http.retry.wait(self._failures - 1)
        LOG.info('download of blob %s broke off at byte %d (%s); resuming in %.2fs', self.digest, self.received,
                 reason, waited)
        with self.client._lock:
            self.client.resumes += 1
        self._connect()

    def _fill(self):
        while not self._held() and not self._eof:
            if self._cancellation.cancelled:
                self._close_response()
                raise cancel.Interrupted(self._cancellation.signum)
            try:
                chunk = next(self._chunks)
            except StopIteration:
                if self.size is not None and self.received < self.size:
                    self._resume('connection closed early')
                    continue
                self._eof = True
                self._close_response()
                return
            except httpx.TransportError as e:
                self._cancellation.check()    # a socket shut down by the cancellation: stop, do not resume
                self._resume('%s: %s' % (type(e).__name__, ' '.join(str(e).split())))
                continue
            if self._skip:
                dropped = min(self._skip, len(chunk))
                chunk = chunk[dropped:]
                self._skip -= dropped
            if chunk:
                self.received += len(chunk)
                if self.on_bytes:
                    self.on_bytes(len(chunk))
                self._hold(chunk)

    def read(self, size=-1):
        if size is None or size < 0:
            return self.readall()
        self._fill()
        return self._take(size)

    def readall(self):
        parts = []
        while True:
            self._fill()
            if not self._held():
                return b''.join(parts)
            parts.append(self._take(-1))

    def _close_response(self):
        if self._response is not None:
            self._response.close()
            self._response = None

    def close(self):
        self._close_response()
        super().close()
