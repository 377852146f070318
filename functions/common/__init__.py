"""Plumbing shared by the OpenFaaS handlers (request parsing, responses, the event loop).

Kept out of the ``app`` package because it is about the python3-http template's
``handle(event, context)`` contract, not about images; ``functions/stack.yml`` copies it
into each function's build context next to ``app/``.
"""
