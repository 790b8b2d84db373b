"""A reverse proxy on loopback that misbehaves for one tool's ``tools/call`` POSTs.

    python fault_proxy.py --port P --upstream http://127.0.0.1:Q --tool NAME --answer 504 --log FILE

Every request is forwarded to the upstream MCP server as is, except a POST whose JSON-RPC body
is ``tools/call`` of ``--tool``:
- ``--answer`` 5xx (504): the request *is* forwarded (the tool runs), and the real response is
  thrown away and replaced by that status: the proxy gave up after the effect;
- ``--answer`` 4xx (400, 404): the request is *not* forwarded (nothing runs) and that status is
  the answer; with ``--refuse-until FILE`` only while FILE is missing, then it forwards.
Each intercepted call is one JSON line in ``--log``: ``{"answer": status, "forwarded": bool}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}


def build(options: argparse.Namespace) -> Starlette:
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(120.0))
    log = Path(options.log)

    def note(answer: int, forwarded: bool) -> None:
        with log.open("a") as f:
            f.write(json.dumps({"answer": answer, "forwarded": forwarded}) + "\n")

    def intercepted(request: Request, body: bytes) -> bool:
        if request.method != "POST":
            return False
        try:
            message: Any = json.loads(body)
        except ValueError:
            return False
        return (
            isinstance(message, dict)
            and message.get("method") == "tools/call"
            and (message.get("params") or {}).get("name") == options.tool
        )

    async def forward(request: Request) -> Response:
        body = await request.body()
        hit = intercepted(request, body)
        refusing = options.answer < 500 and not (
            options.refuse_until is not None and await anyio.Path(options.refuse_until).exists()
        )
        if hit and refusing:
            note(options.answer, forwarded=False)
            return Response("refused by the proxy", status_code=options.answer, media_type="text/plain")
        url = options.upstream + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        upstream = await http.send(
            http.build_request(request.method, url, headers=headers, content=body), stream=True
        )
        if hit and options.answer >= 500:
            await upstream.aread()  # the tool ran and answered; that answer is lost here
            await upstream.aclose()
            note(options.answer, forwarded=True)
            return Response("upstream timed out", status_code=options.answer, media_type="text/plain")
        if hit:
            note(200, forwarded=True)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            headers=out_headers,
            background=BackgroundTask(upstream.aclose),
        )

    methods = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--answer", type=int, required=True)
    parser.add_argument("--refuse-until")
    parser.add_argument("--log", required=True)
    options = parser.parse_args()
    uvicorn.run(build(options), host="127.0.0.1", port=options.port, log_level="warning")


if __name__ == "__main__":
    main()
