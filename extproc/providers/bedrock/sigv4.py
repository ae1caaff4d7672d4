"""AWS Signature Version 4 for upstream requests, computed with botocore's signer.

Owns turning (credentials, region, method, URL, headers, body) into the headers that carry
the signature. The URL path must be exactly the one sent on the wire: botocore URI-encodes
it once more for the canonical request, as AWS does for every service but S3.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from extproc.config.credentials import AwsCredentials

ALGORITHM: Final = "AWS4-HMAC-SHA256"
TIMESTAMP_FORMAT: Final = "%Y%m%dT%H%M%SZ"


def sign_headers(
    credentials: AwsCredentials,
    region: str,
    service: str,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime | None = None,
) -> dict[str, str]:
    """Sign a request; return the headers to send (lower-case names).

    `headers` are the headers to sign and must include `host` with the exact value the
    upstream will see. The result is those headers plus `x-amz-date`,
    `x-amz-security-token` (with a session token) and `authorization`.
    """
    token = credentials.session_token.get_secret_value() if credentials.session_token else None
    signer = SigV4Auth(
        Credentials(
            credentials.access_key_id, credentials.secret_access_key.get_secret_value(), token
        ),
        service,
        region,
    )
    timestamp = (now or datetime.now(UTC)).strftime(TIMESTAMP_FORMAT)
    signed = {name.lower(): value for name, value in headers.items()}
    signed["x-amz-date"] = timestamp
    if token:
        signed["x-amz-security-token"] = token
    request = AWSRequest(method=method, url=url, headers=signed, data=body)
    request.context["timestamp"] = timestamp
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    names = signer.signed_headers(signer.headers_to_sign(request))
    signed["authorization"] = (
        f"{ALGORITHM} Credential={signer.scope(request)}, "
        f"SignedHeaders={names}, Signature={signature}"
    )
    return signed
