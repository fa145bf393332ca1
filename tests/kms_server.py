"""The AWS KMS API for the tests: moto's own server (`moto[server]`), run in a child process on a
free loopback port, with two behaviours of real AWS KMS that moto lacks added at the API level.

    python tests/kms_server.py        # prints "port N" once it listens, serves until killed

What this adds to moto, and nothing else (everything else is moto's server as `moto_server`
runs it: the same WSGI app, request handler and backends):

1. `Sign` with `MessageType=DIGEST`. AWS signs the given digest as it is; moto ignores
   MessageType and hashes the digest again, as if it were the message. securesystemslib's
   `AWSSigner` always sends a DIGEST, so every signature moto makes for it would fail to
   verify. For a DIGEST request that moto accepted, the signature in moto's answer is replaced
   by one over the digest as given (the key's own private key, `Prehashed`).
2. `Sign` with a key that is not enabled. AWS refuses a disabled key (`DisabledException`) and
   a key pending deletion (`KMSInvalidStateException`); moto signs with both.

moto answers first in both cases (its authentication, key lookup and algorithm checks stand);
only a successful `Sign` is changed.
"""

from __future__ import annotations

import base64
import io
import json
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from moto.kms.models import kms_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


class AwsKmsSignSemantics:
    """WSGI middleware around moto's app: see the module's docstring."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET") != "TrentService.Sign":
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        answer: dict = {}

        def keep(status, headers, exc_info=None):
            answer.update(status=status, headers=headers)
            return lambda data: None

        content = b"".join(self.app(environ, keep))
        status, headers = answer["status"], answer["headers"]
        if status.startswith("200"):
            status, content = self._as_aws_would(json.loads(body), json.loads(content))
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(content))))
        start_response(status, headers)
        return [content]

    @staticmethod
    def _as_aws_would(request: dict, response: dict) -> tuple[str, bytes]:
        # moto's answer names the key by its ARN: arn:aws:kms:REGION:ACCOUNT:key/ID
        _, _, _, region, account, key_part = response["KeyId"].split(":", 5)
        key = kms_backends[account][region].describe_key(key_part.split("/", 1)[1])
        if key.key_state == "Disabled":
            return _error("DisabledException", f"{response['KeyId']} is disabled.")
        if key.key_state != "Enabled":
            return _error("KMSInvalidStateException",
                          f"{response['KeyId']} is pending deletion." if
                          key.key_state == "PendingDeletion" else
                          f"{response['KeyId']} is {key.key_state}.")
        if request.get("MessageType") == "DIGEST":
            digest = base64.b64decode(request["Message"])
            algorithm = request["SigningAlgorithm"]
            prehashed = utils.Prehashed(_HASHES[algorithm[-3:]]())
            private = key.private_key.private_key  # the cryptography key moto keeps
            if algorithm.startswith("ECDSA"):
                signature = private.sign(digest, ec.ECDSA(prehashed))
            elif algorithm.startswith("RSASSA_PSS"):
                signature = private.sign(digest, padding.PSS(
                    mgf=padding.MGF1(_HASHES[algorithm[-3:]]()),
                    salt_length=padding.PSS.DIGEST_LENGTH), prehashed)
            else:
                signature = private.sign(digest, padding.PKCS1v15(), prehashed)
            response["Signature"] = base64.b64encode(signature).decode()
        return "200 OK", json.dumps(response).encode()


def _error(code: str, message: str) -> tuple[str, bytes]:
    return "400 Bad Request", json.dumps({"__type": code, "message": message}).encode()


def main() -> None:
    app = AwsKmsSignSemantics(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(f"port {server.server_port}", flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
