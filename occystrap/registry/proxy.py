"""Proxies from the environment, read as curl reads them.

- `http://` requests use `http_proxy` (or `HTTP_PROXY`, except in a CGI environment, where a client's `Proxy:`
  header would arrive as HTTP_PROXY), `https://` requests `https_proxy` or `HTTPS_PROXY`; either falls back to
  `all_proxy`/`ALL_PROXY`. Lower case wins where both are set; an empty value means no proxy.
- A proxy is `[scheme://][user:password@]host[:port]`: http (the default, as in curl), https, or socks5/socks5h
  (with the socksio package). Its credentials go to the proxy only and are never logged or shown.
- `no_proxy`/`NO_PROXY` is a list separated by commas (or spaces) of host names, which also match every name
  below them (`example.com` and `.example.com` both match `r.example.com`), IP addresses, CIDR networks
  (`10.0.0.0/8`), any of them with `:port` to match that port only (`[::1]:5000` for IPv6), or `*` for every host.
  As in curl, loopback addresses are not excluded unless listed.
"""

import dataclasses
import ipaddress
import os
import re
import urllib.parse
from typing import Optional

from occystrap.errors import UsageError

PROXY_SCHEMES = ('http', 'https', 'socks5', 'socks5h')
DEFAULT_PORTS = {'http': 80, 'https': 443}
_UNPRINTABLE = re.compile(r'[\x00-\x20\x7f-\x9f]')


@dataclasses.dataclass(frozen=True)
class Proxy:
    """A proxy from the environment: the URL to use (credentials included) and the variable it came from."""

    url: str
    variable: str

    @property
    def display(self):
        """The proxy's URL without its credentials, for logs and errors."""
        parts = urllib.parse.urlsplit(self.url)
        netloc = parts.netloc.rpartition('@')[2]
        return '%s://%s' % (parts.scheme, netloc)

    @property
    def password(self):
        return urllib.parse.urlsplit(self.url).password


def parse_proxy(value, variable):
    """A Proxy from one variable's value; UsageError (naming the variable, never the credentials) when malformed."""
    value = value.strip()
    if '://' not in value:
        value = 'http://' + value
    shown = re.sub(r'//[^@/]*@', '//***@', value)
    if _UNPRINTABLE.search(value):
        raise UsageError('%s is not a proxy URL: it holds spaces or control characters' % variable)
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        raise UsageError('%s is not a proxy URL: %s' % (variable, shown))
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES:
        raise UsageError('%s names a %s proxy; occystrap speaks to http, https and socks5 proxies'
                         % (variable, scheme or 'scheme-less'))
    if not parts.hostname or (port is not None and not 0 < port < 65536):
        raise UsageError('%s is not a proxy URL: %s' % (variable, shown))
    if scheme.startswith('socks'):
        import importlib.util
        if importlib.util.find_spec('socksio') is None:
            raise UsageError('%s names a SOCKS proxy, which needs the Python package socksio' % variable)
    return Proxy(urllib.parse.urlunsplit((scheme, parts.netloc, '', '', '')), variable)


@dataclasses.dataclass(frozen=True)
class _Entry:
    kind: str                  # 'name', 'ip' or 'net'
    value: object
    port: Optional[int] = None


class NoProxy:
    """The hosts a NO_PROXY value exempts from the proxy (see the module docstring)."""

    def __init__(self, value):
        self.everything = False
        self.entries = []
        for token in re.split(r'[,\s]+', value or ''):
            if token == '*':
                self.everything = True
            elif token:
                entry = _parse_entry(token)
                if entry is not None:
                    self.entries.append(entry)

    def matches(self, host, port):
        """True when a request to `host` (a name or an IP address, IPv6 without brackets) and `port` skips the proxy."""
        if self.everything:
            return True
        host = host.lower().rstrip('.')
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        for entry in self.entries:
            if entry.port is not None and entry.port != port:
                continue
            if entry.kind == 'net':
                if address is not None and address.version == entry.value.version and address in entry.value:
                    return True
            elif entry.kind == 'ip':
                if address == entry.value:
                    return True
            elif host == entry.value or host.endswith('.' + entry.value):
                return True
        return False


def _parse_entry(token):
    """One NO_PROXY entry, or None for one that names nothing (ignored, as curl ignores what it cannot match)."""
    token = token.lower()
    port = None
    if '/' in token:
        try:
            return _Entry('net', ipaddress.ip_network(token.strip('[]'), strict=False))
        except ValueError:
            return None
    if token.startswith('['):
        host, _, rest = token[1:].partition(']')
        if rest:
            if not rest.startswith(':') or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif token.count(':') == 1:
        host, _, text = token.partition(':')
        if not text.isdigit():
            return None
        port = int(text)
    else:
        host = token
    try:
        return _Entry('ip', ipaddress.ip_address(host), port)
    except ValueError:
        pass
    if host.startswith('*.'):
        host = host[1:]
    host = host.strip('.')
    return _Entry('name', host, port) if host else None


def _first(environ, *names):
    for name in names:
        value = environ.get(name)
        if value is not None and value.strip():
            return name, value
    return None, None


class ProxyConfig:
    """The proxies the environment asks for, per URL scheme, and the hosts NO_PROXY exempts."""

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        # Under CGI, HTTP_PROXY holds a client's Proxy: header ("httpoxy"), so only http_proxy counts there.
        http_names = ('http_proxy',) if 'REQUEST_METHOD' in environ else ('http_proxy', 'HTTP_PROXY')
        self.proxies = {}
        for scheme, names in (('http', http_names), ('https', ('https_proxy', 'HTTPS_PROXY'))):
            name, value = _first(environ, *names, 'all_proxy', 'ALL_PROXY')
            self.proxies[scheme] = parse_proxy(value, name) if name else None
        self.no_proxy = NoProxy(_first(environ, 'no_proxy', 'NO_PROXY')[1])

    def for_scheme(self, scheme):
        """The Proxy for requests of a URL scheme, or None."""
        return self.proxies.get(scheme)

    def for_url(self, url):
        """The Proxy a request to `url` goes through, or None (no proxy for its scheme, or NO_PROXY exempts it)."""
        parts = urllib.parse.urlsplit(str(url))
        proxy = self.proxies.get(parts.scheme)
        if proxy is None:
            return None
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            port = None
        return None if self.no_proxy.matches(parts.hostname or '', port) else proxy
