"""Operator console: a web page that shows what the firewall is doing and lets an operator try
a message (docs/console.md).

::

    from alknet_firewall.integrations.console import console_app
    app.mount("/firewall", console_app(fw))          # Starlette / FastAPI

The gateway mounts it at ``/console``. Plain HTML, CSS and a little JavaScript from the
package (``static/``): no build step, no CDN, works offline. Importing this package loads no
web framework; :func:`console_app` imports Starlette.
"""

from __future__ import annotations

from .app import Authorizer, console_app, gateway_authorizer, gateway_console, recent, screen, stats
from .highlight import char_span, highlight

__all__ = [
    "Authorizer",
    "char_span",
    "console_app",
    "gateway_authorizer",
    "gateway_console",
    "highlight",
    "recent",
    "screen",
    "stats",
]
