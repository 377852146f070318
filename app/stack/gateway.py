"""Run only the gateway: render the Nginx config from settings and exec nginx.

For deployments where each part runs on its own (docker-compose.yml): there the workers and
functions are other hosts, named by ``IMAGEREC_GATEWAY_WORKERS`` and
``IMAGEREC_GATEWAY_FUNCTIONS``; the local stack renders the same template in
``app.stack.manage``.
"""

from __future__ import annotations

import os
import shutil

from app.settings import get_settings
from app.stack import services
from app.stack.layout import Layout


def main() -> None:
    settings = get_settings()
    layout = Layout.from_settings(settings)
    layout.ensure()
    conf = services.render_nginx(layout, settings, layout.repo / "deploy" / "nginx.conf.tmpl")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    os.execv(nginx, [nginx, "-e", "stderr", "-c", str(conf)])


if __name__ == "__main__":
    main()
