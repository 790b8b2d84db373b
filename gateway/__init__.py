"""idem-gateway: an MCP gateway that makes agent retries safe.

The path of one ``tools/call``:
``server.app`` → ``server.call_tool`` → ``idempotency.guard`` → ``store`` (claim)
→ ``downstream.session`` → ``store`` (complete) → back to the client.
"""

__version__ = "0.1.0"
