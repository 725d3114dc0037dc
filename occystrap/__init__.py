"""occystrap: move and reshape container images without a container engine."""

__version__ = '0.5.0'
