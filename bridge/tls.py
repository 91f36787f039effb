"""TLS contexts from the configured CA and client certificate files.

``BRIDGE_AMQP_CA_FILE`` / ``BRIDGE_AMQP_CERT_FILE`` / ``BRIDGE_AMQP_KEY_FILE`` give RabbitMQ
(``amqps://``) a private CA and a client certificate; an endpoint's ``ca_file`` lets its CometD
client trust a private CA. Built once at start: a file that is missing or does not parse is a
configuration error (check-config and run refuse it), not a failure at the first connect.
"""

from __future__ import annotations

import ssl
from pathlib import Path


__all__ = ["TlsFileError", "client_context"]


class TlsFileError(ValueError):
    """A CA or certificate file cannot be used (the reason, never the file's content)."""


def client_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext | None:
    """A verifying client context trusting ``ca_file`` (as well as the system CAs) and
    presenting ``cert_file``/``key_file``; None when nothing is configured (library default)."""
    if ca_file is None and cert_file is None and key_file is None:
        return None
    if key_file is not None and cert_file is None:
        raise TlsFileError("a client key needs its certificate (cert_file) too")
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except FileNotFoundError:
            raise TlsFileError(f"CA file {ca_file}: no such file") from None
        except ssl.SSLError:  # an OSError too: caught first
            raise TlsFileError(f"CA file {ca_file}: not a PEM certificate") from None
        except OSError as exc:
            raise TlsFileError(f"CA file {ca_file}: {exc.strerror or 'cannot read'}") from None
    if cert_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        except FileNotFoundError:
            missing = cert_file if not Path(cert_file).exists() else key_file
            raise TlsFileError(f"{missing}: no such file") from None
        except ssl.SSLError:  # an OSError too: caught first
            raise TlsFileError(
                f"certificate {cert_file}: not a PEM certificate with its private key"
            ) from None
        except OSError as exc:
            raise TlsFileError(
                f"certificate {cert_file}: {exc.strerror or 'cannot read'}"
            ) from None
    return context
