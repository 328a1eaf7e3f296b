#!/usr/bin/env python3
"""Makes a certificate that carries a real gateway's evidence extension but a key of its own: evidence that does not
bind the key it is presented with. Usage: forge_cert.py GATEWAY_PORT OUT_CERT_PEM OUT_KEY_PEM"""
import datetime, socket, ssl, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

port, cert_path, key_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.set_alpn_protocols(["h2"])
with context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="tng.internal") as tls:
    real = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
evidence = real.extensions.get_extension_for_oid(x509.ObjectIdentifier("2.23.133.5.4.9")).value
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TNG"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Inclavare Containers")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(42)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=6))
        .add_extension(evidence, critical=False).sign(key, hashes.SHA256()))
open(cert_path, "wb").write(cert.public_bytes(serialization.Encoding.PEM))
open(key_path, "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
