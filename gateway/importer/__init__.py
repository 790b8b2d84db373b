"""``idem-gateway import``: an MCP client's configuration → one manifest per server.

``clients`` reads the file (Claude Desktop, Claude Code's ``.mcp.json``, VS Code's ``mcp.json``)
into neutral entries; ``plan`` turns each entry into a manifest whose literal secrets became
``${VAR}`` references; ``render`` writes the TOML; ``snippet`` prints the client entry that
replaces the imported servers with the gateway; ``command`` starts each server once to list its
tools and ties it together.
"""

from gateway.importer.command import run_import

__all__ = ["run_import"]
