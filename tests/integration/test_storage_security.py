"""MinIO least privilege and encryption at rest, checked against the running stack.

The component keys are the ones ``imagerec stack up`` generated into secrets.env and gave to
the programs (app/stack/iam.py). Denials are checked through the plain S3 API, as an attacker
holding a leaked key would try them.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from minio.error import S3Error

from app import names
from app.ids import new_image_id
from app.settings import Settings
from app.stack import iam
from app.stack.layout import Layout
from app.stack.secrets import read_env_file
from app.storage import make_minio
from tests.conftest import photo_variants

pytestmark = pytest.mark.integration


def _client(settings: Settings, component: str | None) -> Minio:
    if component is None:
        return make_minio(settings)  # root: the stack scripts' key
    values = read_env_file(Layout.from_settings(settings).secrets)
    access, secret = iam.component_credentials(component, values)
    return make_minio(settings, access_key=access, secret_key=secret)


def _denied(call: Callable[[], Any]) -> None:
    with pytest.raises(S3Error) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, bytes | str):
            list(result)  # listings are lazy
    assert info.value.code == "AccessDenied", info.value


def _put(client: Minio, bucket: str, key: str, data: bytes = b"x") -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data))


@pytest.fixture()
def stored_original(settings, gateway):  # noqa: ANN001, ANN201
    """A real upload through the image-upload function: (key, original bytes)."""
    photo = photo_variants(1, seed=secrets.randbits(48))[0]
    reply = gateway.post_raw("/function/image-upload", photo, "image/jpeg")
    assert reply.status == 202, reply.body[:300]
    return names.original_key(reply.json()["id"]), photo


def test_the_uploader_can_only_add_originals(settings, stored_original) -> None:  # noqa: ANN001
    key, _ = stored_original
    uploader = _client(settings, "uploader")
    root = _client(settings, None)

    # Reading, probing, listing or deleting what was stored: all refused.
    _denied(lambda: uploader.get_object(settings.bucket_input, key))
    _denied(lambda: uploader.stat_object(settings.bucket_input, key))
    _denied(lambda: uploader.list_objects(settings.bucket_input))
    _denied(lambda: uploader.remove_object(settings.bucket_input, key))
    assert root.stat_object(settings.bucket_input, key).size > 0  # still there

    # The other buckets: no reading, no writing, no listing.
    for bucket in (settings.bucket_processed, settings.bucket_results):
        _denied(lambda b=bucket: uploader.list_objects(b))
        _denied(lambda b=bucket: uploader.get_object(b, names.result_key(key)))
        _denied(lambda b=bucket: _put(uploader, b, f"zz-uploader-probe-{secrets.token_hex(4)}"))
    _denied(lambda: _put(uploader, settings.bucket_models, "custom/evil/v1/model.keras"))

    # What it is for: adding an original (removed again with the root key).
    probe = names.original_key(new_image_id())
    _put(uploader, settings.bucket_input, probe)
    root.remove_object(settings.bucket_input, probe)


def test_the_classifier_function_key_reads_models_only(settings, stored_original) -> None:  # noqa: ANN001
    key, _ = stored_original
    classifier = _client(settings, "classifier")
    list(classifier.list_objects(settings.bucket_models))  # allowed
    _denied(lambda: classifier.get_object(settings.bucket_input, key))
    _denied(lambda: classifier.list_objects(settings.bucket_results))
    _denied(lambda: _put(classifier, settings.bucket_models, "_default.json", b"{}"))
    _denied(lambda: _put(classifier, settings.bucket_input, names.original_key(new_image_id())))


def test_workers_cannot_change_models(settings, stored_original) -> None:  # noqa: ANN001
    """Model files are code: only the admin (root) key may write the models bucket."""
    key, photo = stored_original
    worker = _client(settings, "worker")
    response = worker.get_object(settings.bucket_input, key)
    try:
        assert response.read() == photo
    finally:
        response.close()
        response.release_conn()
    _denied(lambda: _put(worker, settings.bucket_models, "_default.json", b"{}"))
    _denied(lambda: worker.remove_object(settings.bucket_results, names.result_key(key)))


def test_programs_run_with_their_component_keys(settings) -> None:  # noqa: ANN001
    """The least privilege is real only if the processes use those keys, not root's."""
    from app.stack.manage import rpc

    layout = Layout.from_settings(settings)
    values = read_env_file(layout.secrets)
    expected = {"fn-image-upload": "uploader", "fn-image-classifier": "classifier",
                "worker-1": "worker"}
    infos = {p["name"]: p for p in rpc(layout).supervisor.getAllProcessInfo()}
    for program, component in expected.items():
        assert program in infos, f"{program} is not supervised"
        environ = Path(f"/proc/{infos[program]['pid']}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        access, _ = iam.component_credentials(component, values)
        assert env.get("IMAGEREC_S3_ACCESS_KEY") == access, program
        assert env["IMAGEREC_S3_ACCESS_KEY"] != settings.s3_access_key


def test_every_bucket_encrypts_by_default(settings) -> None:  # noqa: ANN001
    root = _client(settings, None)
    for bucket in settings.buckets:
        config = root.get_bucket_encryption(bucket)
        assert config is not None and config.rule.sse_algorithm == "AES256", bucket


def test_an_uploaded_original_is_encrypted_at_rest(settings, stored_original) -> None:  # noqa: ANN001
    key, photo = stored_original
    stat = _client(settings, "worker").stat_object(settings.bucket_input, key)
    headers = {k.lower(): v for k, v in stat.metadata.items()}
    assert headers.get("x-amz-server-side-encryption") == "AES256", headers

    # And on disk: no stretch of the photo's bytes appears in MinIO's files for it.
    object_dir = Layout.from_settings(settings).data / "minio" / settings.bucket_input / key
    files = [p for p in object_dir.rglob("*") if p.is_file()]
    assert files, f"no MinIO files under {object_dir}"
    on_disk = b"".join(p.read_bytes() for p in files)
    middle = len(photo) // 2
    for start in (middle, middle + 1000, len(photo) - 200):
        assert photo[start:start + 64] not in on_disk


def test_the_admin_user_reaches_the_models_bucket_only(settings, stored_original) -> None:  # noqa: ANN001
    """The admin CLI's key (not root's): key records and models, never anyone's images."""
    key, _ = stored_original
    admin = _client(settings, "admin")
    probe = f"_auth/api-keys/probe-{secrets.token_hex(4)}.json"
    _put(admin, settings.bucket_models, probe, b"{}")
    assert probe in [o.object_name for o in admin.list_objects(settings.bucket_models,
                                                                prefix="_auth/", recursive=True)]
    admin.remove_object(settings.bucket_models, probe)
    _denied(lambda: admin.get_object(settings.bucket_input, key))
    _denied(lambda: admin.list_objects(settings.bucket_input))
    _denied(lambda: admin.list_objects(settings.bucket_results))
    _denied(lambda: _put(admin, settings.bucket_input, new_image_id()))


def test_admin_cli_commands_use_the_admin_user(settings, monkeypatch) -> None:  # noqa: ANN001
    """`imagerec keys` / `models` switch to the admin user's credentials before any S3 call."""
    from app.cli.admin_storage import use_admin_storage
    from app.settings import get_settings
    from app.storage import get_store

    values = read_env_file(Layout.from_settings(settings).secrets)
    access, _ = iam.component_credentials("admin", values)
    monkeypatch.setenv("IMAGEREC_S3_ACCESS_KEY", settings.s3_access_key)
    monkeypatch.setenv("IMAGEREC_S3_SECRET_KEY", settings.s3_secret_key)  # undo restores both
    try:
        assert use_admin_storage()
        assert get_settings().s3_access_key == access != settings.s3_access_key
        assert get_store().client._provider.retrieve().access_key == access  # noqa: SLF001
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        get_store.cache_clear()
