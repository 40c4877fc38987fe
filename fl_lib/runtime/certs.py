"""Throw-away credentials for a Flower federation: a CA, the SuperLink's TLS certificate, SuperNode keys.

Flower's "Enable TLS connections" guide makes these with a shell script around
openssl, and "Authenticate SuperNodes" with `ssh-keygen`; here `cryptography`
makes the same files in one call, so a class (or a test) can stand up a TLS
federation on any machine that has fl_lib installed:

  ca.crt                 the CA certificate every SuperNode and `flwr` trusts
                         (`--root-certificates ca.crt`, `root-certificates = "ca.crt"`)
  server.pem, server.key the SuperLink's certificate, valid for `hosts`, and its key
                         (`--ssl-certfile server.pem --ssl-keyfile server.key`)
  node-K, node-K.pub     SuperNode K's ECDSA P-384 key pair in OpenSSH format
                         (`--auth-supernode-private-key node-K`, `flwr supernode register node-K.pub`)

The CA's private key is never written: nobody can sign a second server with a
throw-away CA, and new credentials are one more call.

    python -m fl_lib.runtime.certs certs --host 127.0.0.1 --host localhost --nodes 2
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..core.errors import ConfigError

CURVE = ec.SECP384R1  # P-384: what Flower's SuperNode authentication asks for (`ssh-keygen -t ecdsa -b 384`)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _host(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN for a name (TLS checks IPs only against IP SANs)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _builder(subject: x509.Name, issuer: x509.Name, key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # a client clock a little behind still accepts
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False))


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def make_ca(common_name: str = "fl_lib throw-away CA", days: int = 30):
    """(private key, certificate) of a CA that can sign server certificates and nothing below them."""
    key = ec.generate_private_key(CURVE())
    cert = (_builder(_name(common_name), _name(common_name), key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .sign(key, hashes.SHA384()))
    return key, cert


def make_server_cert(ca_key, ca_cert: x509.Certificate, hosts=("127.0.0.1", "localhost"), days: int = 30):
    """(private key, certificate) of a TLS server reachable as any of `hosts`, signed by the CA."""
    hosts = list(hosts)
    if not hosts:
        raise ConfigError("hosts=[] is not allowed: the server certificate needs at least one address or name")
    key = ec.generate_private_key(CURVE())
    cert = (_builder(_name(hosts[0]), ca_cert.subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([_host(h) for h in hosts]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    return key, cert


def node_key_pair() -> tuple[bytes, bytes]:
    """(private, public) OpenSSH encodings of a SuperNode key, as `ssh-keygen -t ecdsa -b 384` writes them."""
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _write_private(path: Path, data: bytes) -> None:
    """A private key readable by its owner only (ssh refuses keys that others can read)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_credentials(folder, hosts=("127.0.0.1", "localhost"), nodes: int = 0, days: int = 30) -> dict[str, Path]:
    """Write ca.crt, server.pem, server.key and node-K / node-K.pub (K < nodes) into `folder`; their paths by name.

    Refuses a folder that already holds a ca.crt: replacing a CA under a running
    federation would lock every SuperNode out.
    """
    if nodes < 0:
        raise ConfigError(f"nodes={nodes} is not allowed: must be an int >= 0")
    if days < 1:
        raise ConfigError(f"days={days} is not allowed: must be an int >= 1")
    folder = Path(folder)
    if (folder / "ca.crt").exists():
        raise ConfigError(f"{folder / 'ca.crt'} exists already: write new credentials into an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(days=days)
    server_key, server_cert = make_server_cert(ca_key, ca_cert, hosts, days)
    paths = {"ca.crt": folder / "ca.crt", "server.pem": folder / "server.pem", "server.key": folder / "server.key"}
    paths["ca.crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["server.pem"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["server.key"], _pem_key(server_key))
    for k in range(nodes):
        private, public = node_key_pair()
        paths[f"node-{k}"], paths[f"node-{k}.pub"] = folder / f"node-{k}", folder / f"node-{k}.pub"
        _write_private(paths[f"node-{k}"], private)
        paths[f"node-{k}.pub"].write_bytes(public)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fl_lib.runtime.certs",
                                description="Throw-away TLS and SuperNode credentials for a Flower federation.")
    p.add_argument("folder", help="an empty folder to write ca.crt, server.pem, server.key, node-K, node-K.pub into")
    p.add_argument("--host", action="append", default=None,
                   help="an address or name the SuperLink is reached at; repeat for several "
                        "(default: 127.0.0.1 and localhost)")
    p.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to make (0)")
    p.add_argument("--days", type=int, default=30, help="days the certificates stay valid (30)")
    args = p.parse_args(argv)
    try:
        paths = write_credentials(args.folder, args.host or ("127.0.0.1", "localhost"), args.nodes, args.days)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
