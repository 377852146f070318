"""MinIO least privilege and encryption at rest, set up by the stack scripts.

Why one access key per component: the root key can do anything to every bucket, and the
image-upload function faces the internet. If a function or worker is compromised, its key
should allow only what its own code paths do. Each component gets a MinIO user whose only
policy (``imagerec-<component>``) lists the S3 actions those paths perform:

``uploader`` (the ``image-upload`` function: ``app.ingest.accept``)
    PutObject on ``input-images``. To de-duplicate it reads the default-model pointer
    (``models/_default.json``, ``custom/*/info.json`` and the model listing), never an image.
    It may not read, list or delete images. ``accept`` removes the original when the Kafka
    produce fails; for this key that best-effort removal is denied and logged, and the
    periodic reconciler re-enqueues the stored original, so nothing is lost (a client retry
    is answered from the de-duplication cache once that image is done).
``classifier`` (the ``image-classifier`` function: ``app.pipeline.classify_now``)
    Reads the ``models`` bucket only: it stores nothing.
``worker`` (the Faust workers)
    The union of everything a worker runs: uploads through ``POST /v1/images`` (Put, and
    Delete for the cleanup after a failed produce), the classify agent (Get originals, Put
    model inputs and results), retrieval (Get results, Head originals), the reconciler
    (List originals and results), readiness (HeadBucket on every bucket), the model-input
    thumbnails of ``GET /v1/images/{id}/input`` (Get/List ``processed-images``; List so that
    a missing input is a 404, not an access error) and the model registry (Get/List
    ``models``). It cannot write ``models``: model files are code, so
    only an admin (root credentials, ``imagerec models import``) may add or change them.
``admin`` (the admin CLI: ``imagerec keys``, ``imagerec models``)
    Get/Put/Delete/List on ``models`` (API key records under ``_auth/``, custom models and
    the default pointer), HeadBucket for checks; no access to anyone's images. The CLI uses
    this key instead of root's (``app.cli.admin_storage``), and ``imagerec stack env
    --admin`` prints it; the root key is printed nowhere.
``api`` (a read-only reader of results)
    Get/List ``classification-results`` and ``processed-images`` (the result and its
    thumbnail), HeadBucket for readiness. The local stack serves
    the API from the workers (which hold the worker key); this key is for deployments that
    run the read side separately.

Root credentials stay with the stack scripts (provisioning, this module).

Encryption at rest: MinIO's SSE-S3 needs a KMS; the static key ``MINIO_KMS_SECRET_KEY`` (a
name and 32 random bytes, generated once into ``secrets.env``) is the single-node form of it.
``app.stack.provision`` sets SSE-S3 as every bucket's default encryption. Losing the key
makes the encrypted objects unreadable, so it is kept with the other generated secrets.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from minio import MinioAdmin
from minio.credentials import StaticProvider
from minio.error import MinioAdminException

from app.settings import Settings

COMPONENTS = ("uploader", "classifier", "worker", "api", "admin")
KMS_KEY_NAME = "imagerec-sse"
KMS_ENV = "IMAGEREC_MINIO_KMS_SECRET_KEY"
POLICY_PREFIX = "imagerec-"


def key_env_names(component: str) -> tuple[str, str]:
    """The secrets.env names of a component's access key and secret key."""
    upper = component.upper()
    return f"IMAGEREC_S3_{upper}_ACCESS_KEY", f"IMAGEREC_S3_{upper}_SECRET_KEY"


def _access_key(component: str) -> Callable[[], str]:
    # The component name in the key makes MinIO's audit and trace output readable.
    return lambda: f"imagerec-{component}-{secrets.token_hex(6)}"


def _secret_key() -> str:
    return secrets.token_urlsafe(30)  # 40 characters: MinIO's maximum secret length


def _kms_key() -> str:
    return f"{KMS_KEY_NAME}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def generated_secrets() -> dict[str, Callable[[], str]]:
    """Generators for the per-component keys and the KMS key, for ``ensure_secrets``.

    Generated before supervisord's config is rendered, because that config puts them into
    the programs' environments; the MinIO users are created later, once MinIO answers.
    """
    out: dict[str, Callable[[], str]] = {}
    for component in COMPONENTS:
        access, secret = key_env_names(component)
        out[access] = _access_key(component)
        out[secret] = _secret_key
    out[KMS_ENV] = _kms_key
    return out


def _secrets_values(settings: Settings) -> dict[str, str]:
    from app.stack.secrets import read_env_file

    return read_env_file(Path(settings.home) / "secrets.env")


def _lookup(values: Mapping[str, str], name: str) -> str:
    """The process environment wins over secrets.env, as it does for ``Settings``."""
    return os.environ.get(name) or values.get(name, "")


def component_credentials(component: str, values: Mapping[str, str]) -> tuple[str, str]:
    """``(access_key, secret_key)`` of a component; raises if they were never generated."""
    access_name, secret_name = key_env_names(component)
    access, secret = _lookup(values, access_name), _lookup(values, secret_name)
    if not access or not secret:
        raise KeyError(f"{access_name}/{secret_name} missing: run `imagerec stack up`, which "
                       "generates them into secrets.env")
    return access, secret


def program_env(component: str, values: Mapping[str, str]) -> dict[str, str]:
    """The environment that makes a program use its component's key instead of root's.

    ``IMAGEREC_S3_ACCESS_KEY``/``SECRET_KEY`` in a process's environment take precedence
    over secrets.env in ``Settings``, so the program's code needs no change.
    """
    access, secret = component_credentials(component, values)
    return {"IMAGEREC_S3_ACCESS_KEY": access, "IMAGEREC_S3_SECRET_KEY": secret}


def minio_kms_env(values: Mapping[str, str]) -> dict[str, str]:
    """MinIO's static KMS key; empty (no SSE) only if secrets.env predates this module."""
    key = _lookup(values, KMS_ENV)
    return {"MINIO_KMS_SECRET_KEY": key} if key else {}


# ---- policies --------------------------------------------------------------------------------

def _bucket(name: str) -> str:
    return f"arn:aws:s3:::{name}"


def _objects(name: str, pattern: str = "*") -> str:
    return f"arn:aws:s3:::{name}/{pattern}"


def _allow(actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": resources}


def policies(settings: Settings) -> dict[str, dict[str, Any]]:
    """One IAM policy document per component (see the module docstring for the reasons)."""
    inp, proc, results, models = (settings.bucket_input, settings.bucket_processed,
                                  settings.bucket_results, settings.bucket_models)
    every_bucket = [_bucket(b) for b in settings.buckets]
    read_models = [
        _allow(["s3:GetObject"], [_objects(models)]),
        _allow(["s3:ListBucket"], [_bucket(models)]),
    ]
    docs = {
        "uploader": [
            _allow(["s3:PutObject"], [_objects(inp)]),
            # The default-model pointer only (de-duplication), not the model files.
            _allow(["s3:GetObject"], [_objects(models, "_default.json"),
                                      _objects(models, "custom/*/info.json")]),
            _allow(["s3:ListBucket"], [_bucket(models)]),
        ],
        "classifier": read_models,
        "worker": [
            _allow(["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], [_objects(inp)]),
            _allow(["s3:GetObject", "s3:PutObject"], [_objects(proc)]),
            _allow(["s3:GetObject", "s3:PutObject"], [_objects(results)]),
            # Listing: the reconciler; also makes a missing key a 404, not a 403.
            _allow(["s3:ListBucket"], [_bucket(inp), _bucket(proc), _bucket(results)]),
            _allow(["s3:HeadBucket"], every_bucket),  # /readyz checks every bucket
            *read_models,
        ],
        "admin": [
            _allow(["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], [_objects(models)]),
            _allow(["s3:ListBucket"], [_bucket(models)]),
            _allow(["s3:HeadBucket"], every_bucket),
        ],
        "api": [
            _allow(["s3:GetObject"], [_objects(results), _objects(proc)]),
            _allow(["s3:ListBucket"], [_bucket(results), _bucket(proc)]),
            _allow(["s3:HeadBucket"], every_bucket),
        ],
    }
    return {c: {"Version": "2012-10-17", "Statement": docs[c]} for c in COMPONENTS}


# ---- applying them ---------------------------------------------------------------------------

def admin_client(settings: Settings) -> MinioAdmin:
    """MinIO's admin API with the root credentials (only the stack scripts hold them)."""
    import urllib3

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3.0, read=15.0),
                               retries=urllib3.Retry(total=2, backoff_factor=0.2))
    return MinioAdmin(endpoint=settings.s3_endpoint,
                      credentials=StaticProvider(settings.s3_access_key, settings.s3_secret_key),
                      region=settings.s3_region, secure=settings.s3_secure, http_client=http)


def _attached(admin: MinioAdmin, user: str) -> set[str]:
    info = json.loads(admin.user_info(user) or "{}")
    return {p for p in (info.get("policyName") or "").split(",") if p}


def ensure_iam(settings: Settings, values: Mapping[str, str] | None = None) -> list[str]:
    """Create or update each component's policy and user, and attach exactly that policy.

    Idempotent: policies are rewritten (so edits here take effect on the next ``stack up``),
    users are re-added with their current secret, and any other policy found attached to a
    component user is detached. Returns the component users it handled.
    """
    values = _secrets_values(settings) if values is None else values
    admin = admin_client(settings)
    handled = []
    for component, document in policies(settings).items():
        name = POLICY_PREFIX + component
        access, secret = component_credentials(component, values)
        admin.policy_add(name, policy=document)
        admin.user_add(access, secret)
        attached = _attached(admin, access)
        if extra := sorted(attached - {name}):
            admin.detach_policy(extra, user=access)
        if name not in attached:
            try:
                admin.attach_policy([name], user=access)
            except MinioAdminException as exc:  # a concurrent `up` attached it first
                if "already" not in str(exc).lower():
                    raise
        handled.append(f"{component}:{access}")
    return handled


def ensure_bucket_encryption(settings: Settings) -> list[str]:
    """Make SSE-S3 every bucket's default encryption; returns the buckets that changed.

    New objects are then encrypted by MinIO with a per-object key sealed by the KMS key;
    objects written before stay readable as they are. Fails loudly when MinIO has no KMS:
    a stack that silently stores plaintext is worse than one that does not start.
    """
    from minio.sseconfig import AES256, Rule, SSEConfig

    from app.storage import make_minio

    client = make_minio(settings)
    changed = []
    for bucket in settings.buckets:
        current = client.get_bucket_encryption(bucket)
        if current is not None and current.rule.sse_algorithm == AES256:
            continue
        try:
            client.set_bucket_encryption(bucket, SSEConfig(Rule.new_sse_s3_rule()))
        except Exception as exc:
            raise RuntimeError(
                f"cannot enable SSE-S3 on bucket {bucket!r} ({exc}); MinIO needs a KMS key: "
                f"{KMS_ENV} in secrets.env must reach the minio program as "
                "MINIO_KMS_SECRET_KEY") from exc
        changed.append(bucket)
    return changed
