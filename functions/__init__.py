"""The OpenFaaS functions ``image-upload`` and ``image-classifier``, and their local host.

Each ``functions/<name>/handler.py`` has the python3-http template's shape
(``handle(event, context)``), so ``faas-cli up -f functions/stack.yml`` deploys it unchanged;
``python -m functions.serve <name>`` hosts it locally the way the of-watchdog would.
"""
