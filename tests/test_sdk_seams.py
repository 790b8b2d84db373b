"""The SDK's private attributes the gateway relies on (``gateway/_sdk.py``) are still there.

If an SDK upgrade moves one, this fails here, by name, instead of somewhere deep in a relay.
"""

from __future__ import annotations

import inspect

from mcp.client.session import ClientSession
from mcp.server.session import ServerSession

from gateway import _sdk


def test_the_server_session_still_holds_its_request_channel_and_connection() -> None:
    source = inspect.getsource(ServerSession.__init__)
    assert "self._request_outbound = request_outbound" in source
    assert "self._connection = connection" in source


def test_the_client_session_still_stamps_dispatches_and_absorbs_listings() -> None:
    assert "self._stamp" in inspect.getsource(ClientSession.__init__)
    assert "self._dispatcher" in inspect.getsource(ClientSession.__init__)
    assert callable(ClientSession._absorb_tool_listing)
    assert list(inspect.signature(ClientSession._absorb_tool_listing).parameters) == [
        "self",
        "result",
        "complete",
    ]


def test_every_seam_is_one_function_of_the_door_module() -> None:
    seams = {
        name
        for name, value in vars(_sdk).items()
        if inspect.isfunction(value) and value.__module__ == _sdk.__name__
    }
    assert seams == {"request_channel", "connection", "stamp", "dispatcher", "absorb_tool_listing"}
