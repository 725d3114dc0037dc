"""A small client for the Docker Engine API over a Unix socket (Docker, or Podman's compatible service).

Only what docker:// needs: ping, inspect an image, export one as a `docker save` tarball and load one. Image
data is streamed both ways in chunks, never held whole in memory. Every failure is an EngineError with one line
that names the socket.
"""

import json
import os
import urllib.parse

import httpx

from occystrap import streams
from occystrap.errors import OccystrapError

# The most of an engine's answer held in memory (inspect JSON, version, the reply to a load); a longer error
# message is dropped. Image data itself is streamed, never held.
ANSWER_LIMIT = 16 * 1024 * 1024
DOCKER_SOCKET = '/var/run/docker.sock'
ROOT_PODMAN_SOCKET = '/run/podman/podman.sock'
# Small requests answer at once; exports and loads may take minutes before the first byte, so no read limit.
QUICK_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
STREAM_TIMEOUT = httpx.Timeout(None, connect=10.0)


class EngineError(OccystrapError):
    """The engine is missing, refused a request, or answered something we cannot use."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def candidate_sockets(environ=None):
    """The usual engine sockets, most likely first: Docker's, then rootless and rootful Podman's."""
    environ = os.environ if environ is None else environ
    candidates = [DOCKER_SOCKET]
    if environ.get('XDG_RUNTIME_DIR'):
        candidates.append(os.path.join(environ['XDG_RUNTIME_DIR'], 'podman', 'podman.sock'))
    candidates.append(ROOT_PODMAN_SOCKET)
    return candidates


def socket_from_address(address, what):
    """The path of a 'unix:///path' address (or a plain path); other transports are refused."""
    if address.startswith('unix://'):
        path = address[len('unix://'):]
    elif '://' in address:
        raise EngineError('%s %r is not a unix:// socket: occystrap talks to engines over Unix sockets only '
                          '(pass ?socket=PATH)' % (what, address))
    else:
        path = address
    if not path:
        raise EngineError('%s %r names no socket path' % (what, address))
    return path


def default_socket(environ=None):
    """The socket to use when none is given: DOCKER_HOST if set, else the first usual socket that exists.

    When none exists the answer is Docker's default, so the error names the place most users expect.
    """
    environ = os.environ if environ is None else environ
    if environ.get('DOCKER_HOST'):
        return socket_from_address(environ['DOCKER_HOST'], 'DOCKER_HOST')
    for candidate in candidate_sockets(environ):
        if os.path.exists(candidate):
            return candidate
    return DOCKER_SOCKET


def one_line(text, limit=300):
    """The first line of an engine message, whitespace collapsed and shortened, for a one-line error."""
    text = ' '.join(str(text).strip().splitlines()[0].split()) if str(text).strip() else ''
    text = text.rstrip(':').strip()
    return text if len(text) <= limit else text[:limit - 3] + '...'


class _ResponseReader(streams.ChunkReader):
    """A readable binary stream over a streamed httpx response; close() releases the connection."""

    def __init__(self, response, socket_path):
        self._response = response
        self._chunks = response.iter_bytes(streams.CHUNK)
        self._socket_path = socket_path
        self._eof = False

    def read(self, size=-1):
        if size is None or size < 0:
            size = streams.CHUNK * 4
        while not self._held() and not self._eof:
            try:
                self._hold(next(self._chunks))
            except StopIteration:
                self._eof = True
            except httpx.HTTPError as e:
                raise EngineError('engine at %s broke off the export: %s' % (self._socket_path, e or type(e).__name__))
        return self._take(size)

    def close(self):
        if not self.closed:
            self._response.close()
        super().close()


def _file_chunks(f):
    while True:
        chunk = f.read(streams.CHUNK)
        if not chunk:
            return
        yield chunk


class EngineClient:
    """Talks to one engine's API socket. Use as a context manager, or call close()."""

    def __init__(self, socket_path=None):
        self.socket_path = socket_path or default_socket()
        self._client = httpx.Client(transport=httpx.HTTPTransport(uds=self.socket_path), base_url='http://docker',
                                    timeout=QUICK_TIMEOUT)

    @classmethod
    def for_uri(cls, uri):
        """The client a docker:// URI asks for: its ?socket= option, else the default socket."""
        socket = uri.options.get('socket')
        return cls(socket_from_address(socket, 'socket option') if socket else None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._client.close()

    def __repr__(self):
        return '<EngineClient %s>' % self.socket_path

    # --- requests -------------------------------------------------------------------------------------------------

    def _send(self, method, path, stream=False, timeout=QUICK_TIMEOUT, **kwargs):
        """Send a request; transport failures become EngineErrors that say what is wrong with the socket.

        Unless `stream`, the answer is read into memory, at most ANSWER_LIMIT bytes.
        """
        from occystrap.registry.http import buffered
        request = self._client.build_request(method, path, timeout=timeout, **kwargs)
        try:
            response = self._client.send(request, stream=True)
            if stream:
                return response
            return buffered(response, ANSWER_LIMIT, 'the answer of the engine at %s to %s %s'
                            % (self.socket_path, method, path), error=EngineError)
        except httpx.ConnectError as e:
            raise self._connect_error(e)
        except httpx.TimeoutException:
            raise EngineError('engine at %s did not answer %s %s in time' % (self.socket_path, method, path))
        except httpx.HTTPError as e:
            raise EngineError('engine at %s failed on %s %s: %s' % (self.socket_path, method, path,
                                                                    one_line(e) or type(e).__name__))

    def _connect_error(self, error):
        if not os.path.exists(self.socket_path):
            return EngineError('no Docker or Podman engine at %s (start one or pass ?socket=)' % self.socket_path)
        cause = error.__cause__ or error.__context__
        if isinstance(cause, PermissionError) or 'Permission denied' in str(error):
            return EngineError('cannot connect to the engine at %s: permission denied' % self.socket_path)
        return EngineError('no Docker or Podman engine answers at %s (start one or pass ?socket=): %s'
                           % (self.socket_path, one_line(error) or type(error).__name__))

    def _check(self, response, image=None):
        """Raise an EngineError for an error status, with the engine's own message; 404 on an image says so."""
        if response.status_code < 400:
            return response
        from occystrap.registry.http import ERROR_BODY_LIMIT, read_capped
        try:
            body = response.content
        except httpx.ResponseNotRead:
            try:
                body = read_capped(response, ERROR_BODY_LIMIT, 'an error answer', error=EngineError)
            except (EngineError, httpx.HTTPError, httpx.StreamError):
                body = b''
        finally:
            response.close()
        message = ''
        try:
            message = json.loads(body).get('message', '')
        except (ValueError, AttributeError, RecursionError):
            message = body.decode('utf-8', 'replace')
        if response.status_code == 404 and image is not None:
            detail = 'no such image %s' % image
        else:
            detail = one_line(message) or response.reason_phrase
        raise EngineError('engine at %s answered %d: %s' % (self.socket_path, response.status_code, detail),
                          status=response.status_code)

    @staticmethod
    def _image_path(ref, suffix):
        # Names keep their slashes and colons (the engine's router matches them); anything else is escaped.
        return '/images/%s/%s' % (urllib.parse.quote(ref, safe='/:@'), suffix)

    # --- the API --------------------------------------------------------------------------------------------------

    def ping(self):
        """Check that an engine answers on the socket; returns its answer ('OK')."""
        response = self._check(self._send('GET', '/_ping'))
        return response.text

    def version(self):
        """The engine's /version document (Version, ApiVersion, Components...)."""
        return self._check(self._send('GET', '/version')).json()

    def inspect_image(self, ref):
        """The engine's description of an image (Id, RepoTags, RootFS.Layers...); EngineError 404 if missing."""
        response = self._check(self._send('GET', self._image_path(ref, 'json')), image=ref)
        try:
            return response.json()
        except (ValueError, RecursionError):
            raise EngineError('engine at %s answered inspect of %s with something other than JSON'
                              % (self.socket_path, ref))

    def export_image(self, ref):
        """A readable stream of `docker save` tarball bytes for one image; close it when done.

        The data is streamed from the engine as it is read.
        """
        response = self._send('GET', self._image_path(ref, 'get'), stream=True, timeout=STREAM_TIMEOUT)
        self._check(response, image=ref)
        return _ResponseReader(response, self.socket_path)

    def load_image(self, source):
        """Load a `docker save` tarball (a path or a readable binary stream) into the engine, streaming it.

        Returns the names the engine reported loading (e.g. ['docker.io/library/x:v1']). The engine's reply is a
        stream of JSON lines; an error line raises EngineError.
        """
        headers = {'Content-Type': 'application/x-tar'}
        if isinstance(source, (str, os.PathLike)):
            with open(source, 'rb') as f:
                headers['Content-Length'] = str(os.fstat(f.fileno()).st_size)
                return self._load(_file_chunks(f), headers)
        return self._load(_file_chunks(source), headers)

    def _load(self, chunks, headers):
        response = self._send('POST', '/images/load', params={'quiet': '1'}, content=chunks, headers=headers,
                              timeout=STREAM_TIMEOUT, stream=True)
        self._check(response)
        from occystrap.registry.http import read_capped
        try:
            body = read_capped(response, ANSWER_LIMIT, 'the reply of the engine at %s to the load'
                               % self.socket_path, error=EngineError)
        except httpx.HTTPError as e:
            raise EngineError('engine at %s broke off its reply to the load: %s'
                              % (self.socket_path, one_line(e) or type(e).__name__))
        finally:
            response.close()
        return self._loaded_names(body)

    def _loaded_names(self, body):
        names = []
        for line in body.decode('utf-8', 'replace').splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                message = {'stream': line}  # engines that answer in plain text
            if not isinstance(message, dict):
                continue
            if message.get('error') or message.get('errorDetail'):
                detail = message.get('error') or (message.get('errorDetail') or {}).get('message', '')
                raise EngineError('engine at %s could not load the image: %s' % (self.socket_path, one_line(detail)))
            text = str(message.get('stream') or '')
            for prefix in ('Loaded image: ', 'Loaded image ID: '):
                if text.startswith(prefix):
                    names.extend(n.strip() for n in text[len(prefix):].split(',') if n.strip())
        return names
