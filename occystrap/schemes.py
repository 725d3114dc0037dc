"""The one table of URI schemes: which class reads and which writes each, and the query options it takes.

`uris.py` (grammar, options) and `pipeline.py` (which class to build) derive everything from `SCHEMES`; adding a
scheme is one entry here and one class. Classes are named as 'module:Class' strings and imported only when a run
uses them, so `occystrap --help` loads none of them.
"""

PLATFORM_OPTIONS = ('os', 'arch', 'architecture', 'variant')


class Scheme:
    """One URI scheme: its classes per role ('input', 'output'), its options per role, and its aliases.

    A plain class rather than a dataclass: this module loads with every command, and generating a dataclass's
    methods cost about 1.4 ms of that start-up.
    """

    __slots__ = ('name', 'input', 'output', 'path', 'input_options', 'output_options', 'booleans', 'credentials',
                 'aliases')

    def __init__(self, name, input=None, output=None, path=False, input_options=(), output_options=(),
                 booleans=frozenset(), credentials=False, aliases=()):
        self.name = name
        self.input = input                    # 'module:Class' of its ImageInput, None when it cannot be a source
        self.output = output                  # 'module:Class' of its ImageOutput, None when not a destination
        self.path = path                      # SCHEME:///PATH rather than a reference
        self.input_options = tuple(input_options)
        self.output_options = tuple(output_options)
        self.booleans = frozenset(booleans)   # options whose value is true/false (checked when the URI is parsed)
        self.credentials = credentials        # takes USER[:PASSWORD]@ before its host
        self.aliases = tuple(aliases)

    def __repr__(self):
        return 'Scheme(%r)' % self.name

    def cls(self, role):
        """The 'module:Class' string for a role, or None."""
        return self.input if role == 'input' else self.output

    def options(self, role):
        """The query options the scheme takes in a role, or None when it cannot play that role."""
        if self.cls(role) is None:
            return None
        return self.input_options if role == 'input' else self.output_options


SCHEMES = (
    Scheme('registry', input='occystrap.inputs.registry:RegistryInput',
           output='occystrap.outputs.registry:RegistryOutput',
           input_options=PLATFORM_OPTIONS + ('insecure', 'tls-verify'), output_options=('insecure', 'tls-verify'),
           booleans=frozenset({'insecure', 'tls-verify'}), credentials=True),
    Scheme('quay', input='occystrap.inputs.quay:QuayInput',
           input_options=('token', 'api', 'registry', 'insecure') + PLATFORM_OPTIONS,
           booleans=frozenset({'insecure'})),
    Scheme('docker', input='occystrap.inputs.docker:DockerInput', output='occystrap.outputs.docker:DockerOutput',
           input_options=('socket',), output_options=('socket',)),
    Scheme('tar', input='occystrap.inputs.tarball:TarballInput', output='occystrap.outputs.tarball:TarballOutput',
           path=True, output_options=('format', 'ref'), aliases=('file',)),
    Scheme('dir', output='occystrap.outputs.directory:DirectoryOutput', path=True,
           output_options=('unique_names', 'expand'), booleans=frozenset({'unique_names', 'expand'})),
    Scheme('oci', output='occystrap.outputs.ocibundle:OCIBundleOutput', path=True),
    Scheme('mounts', output='occystrap.outputs.mounts:MountsOutput', path=True),
    Scheme('ocidir', input='occystrap.inputs.ocidir:OCIDirInput', output='occystrap.outputs.ocidir:OCIDirOutput',
           path=True, input_options=('ref',), output_options=('ref',)),
)

BY_NAME = {scheme.name: scheme for scheme in SCHEMES}
ALIASES = {alias: scheme.name for scheme in SCHEMES for alias in scheme.aliases}


def lookup(name):
    """The Scheme for a name or alias (case-insensitive), or None."""
    name = name.lower()
    return BY_NAME.get(ALIASES.get(name, name))


def names(role):
    """Every scheme name usable in a role, aliases right after their scheme, for messages and parsing."""
    return tuple(n for scheme in SCHEMES if scheme.cls(role) for n in (scheme.name,) + scheme.aliases)


def classes(role):
    """{scheme name or alias: 'module:Class'} for a role."""
    return {n: lookup(n).cls(role) for n in names(role)}


def shared_options(scheme, other, role):
    """The options of `scheme` that `other` also takes in `role` (quay:// passes these on to registry://)."""
    theirs = BY_NAME[other].options(role) or ()
    return tuple(o for o in BY_NAME[scheme].options(role) or () if o in theirs)
