"""The admin CLI's storage identity: the ``admin`` MinIO user, never the root key.

``imagerec keys`` and ``imagerec models`` write the ``models`` bucket (key records, model
files). On the local stack they use the ``admin`` user that ``imagerec stack up`` created
(``app.stack.iam``), whose policy reaches that bucket only, so a mistake or a compromised
admin shell cannot touch anyone's images and the root key need not leave the stack scripts.
Where no admin user was generated (a remote deployment configured through the environment),
the configured credentials are used as they are.
"""

from __future__ import annotations

import os


def use_admin_storage() -> bool:
    """Point this process's S3 credentials at the admin user; True if it did.

    Must run before the first ``get_store()``; clears the cached settings and store."""
    from app.settings import get_settings
    from app.stack import iam
    from app.stack.layout import Layout
    from app.stack.secrets import read_env_file

    settings = get_settings()
    values = read_env_file(Layout.from_settings(settings).secrets)
    try:
        access, secret = iam.component_credentials("admin", values)
    except KeyError:
        return False
    os.environ["IMAGEREC_S3_ACCESS_KEY"] = access
    os.environ["IMAGEREC_S3_SECRET_KEY"] = secret
    get_settings.cache_clear()
    from app.storage import get_store

    get_store.cache_clear()
    return True
