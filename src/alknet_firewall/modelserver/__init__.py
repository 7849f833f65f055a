"""Model servers for the activation wire protocol (top layer: no core module imports this).

- :mod:`.app`: ``alknet-firewall model serve`` (Starlette + uvicorn, one box).
- :mod:`.ray_serve`: the Ray Serve application (``model serve --engine ray``).
- :mod:`.ray_scan`: offline scans on Ray Data (``scan --engine ray``).
- :mod:`.service`: what they share (describe, parse, batch, split).

Importing this package loads nothing heavy; torch, Starlette and Ray load in the sub-modules.
"""

__all__: list[str] = []
