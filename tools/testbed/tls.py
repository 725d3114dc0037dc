"""TLS material for loopback services: a generated CA, a server certificate for 127.0.0.1 and localhost."""

import datetime
import ipaddress
import shutil
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for a benchmark left running over a weekend; short enough that a leaked CA expires.
VALIDITY = datetime.timedelta(days=7)


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def pem_cert(cert):
    """A certificate as PEM bytes."""
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key):
    """A private key as unencrypted PKCS#8 PEM bytes."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject, issuer, key):
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1)).not_valid_after(_now() + VALIDITY))


def self_signed(common_name, key, ca):
    """A self-signed certificate for an EC key: a CA (may sign certificates) when ``ca``, else a leaf."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (_builder(name, name, key)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    return builder.sign(key, hashes.SHA256())


def write_tls_material(directory):
    """Create a CA and a server certificate for 127.0.0.1 and localhost under ``directory``.

    Returns a dict of paths: ``ca`` (CA certificate, PEM), ``cert`` and ``key`` (server certificate and key, PEM),
    and ``cert_dir`` (a directory holding only ``ca.crt``, the layout skopeo's ``--cert-dir`` expects). Several
    servers may share one set, so that clients trust them all through one CA.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = self_signed('occystrap test bed CA', ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (_builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, '127.0.0.1')]), ca_cert.subject,
                            server_key)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.SubjectAlternativeName([
                       x509.IPAddress(ipaddress.ip_address('127.0.0.1')), x509.DNSName('localhost')]),
                       critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    paths = {'ca': directory / 'ca.pem', 'cert': directory / 'server.pem', 'key': directory / 'server-key.pem',
             'cert_dir': directory / 'skopeo-certs'}
    paths['ca'].write_bytes(pem_cert(ca_cert))
    paths['cert'].write_bytes(pem_cert(server_cert))
    paths['key'].write_bytes(pem_key(server_key))
    paths['cert_dir'].mkdir(exist_ok=True)
    shutil.copyfile(paths['ca'], paths['cert_dir'] / 'ca.crt')
    return paths


def client_context(ca):
    """An ``ssl.SSLContext`` that trusts the CA file ``ca``, or None (the default trust) when ``ca`` is None."""
    return ssl.create_default_context(cafile=str(ca)) if ca else None


def write_client_material(directory, common_name='occystrap test client'):
    """Create a client CA and a client certificate it signs (for mutual TLS) under ``directory``.

    Returns a dict of paths: ``ca`` (the client CA, for a server's ``clientcas``), ``cert`` and ``key`` (the client
    certificate and its key, PEM, as certs.d's ``client.cert`` and ``client.key``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = self_signed('occystrap test client CA', ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), ca_cert.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {'ca': directory / 'client-ca.pem', 'cert': directory / 'client.cert', 'key': directory / 'client.key'}
    paths['ca'].write_bytes(pem_cert(ca_cert))
    paths['cert'].write_bytes(pem_cert(cert))
    paths['key'].write_bytes(pem_key(key))
    return paths


def client_context_with_cert(ca, cert, key):
    """Like ``client_context``, presenting the client certificate ``cert``/``key`` too."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    context.load_cert_chain(str(cert), str(key))
    return context
