"""A small REST API, described by ``invoices_api.yaml``, whose every request can be counted.

It dedupes side effects on the ``Idempotency-Key`` header the way the IETF draft
(draft-ietf-httpapi-idempotency-key-header) describes: the first request with a key runs and
its response is stored; a repeat with the same payload gets the stored response; a repeat
while the first still runs gets 409, and one with another payload gets 422 (both problem
documents that name the key). Keys and invoices live in a state file written before the
response is sent, so a restart (or a crash after the effect) forgets nothing.

Every request appends one JSON line to the ledger (``--ledger``), fsynced before the
response: ``outcome`` is ``executed`` for a side effect that ran, else ``replayed``,
``in_progress``, ``conflict``, ``read``, ``rejected`` or ``unauthorized``. The ledger never
holds the bearer token, only whether it matched.

Test hooks, outside the OpenAPI document: ``POST /_faults`` with ``{"operation": ID,
"fault": F}`` makes the next request to that operation fail once:
``error_after_effect`` (runs, stores its response, answers 503), ``crash_after_effect``
(runs, stores, and the process exits without answering), ``rate_limit`` (429 with
Retry-After, nothing runs), ``hold`` (runs only once the file ``gate`` exists),
``echo_error`` (500 whose body quotes the request's Authorization header).

``python invoices_api.py --port 8765 --ledger ledger.jsonl --state state.json``; the token
is ``$INVOICES_API_TOKEN`` (unset: no authentication). The document is served at
``/openapi.yaml``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

HERE = Path(__file__).resolve().parent
DOCUMENT = HERE / "invoices_api.yaml"
GATE_POLL_SECONDS = 0.005
GATE_LIMIT_SECONDS = 60.0
PROBLEM = "application/problem+json"


@dataclass
class Api:
    ledger: Path
    state_file: Path
    token: str | None
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # key → fingerprint, response | running
    faults: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def load(self) -> None:
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            self.invoices, self.keys = state["invoices"], state["keys"]
            # A request that was running when the process died never answered: forget it.
            self.keys = {k: v for k, v in self.keys.items() if "response" in v}

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        with tmp.open("w") as out:
            json.dump({"invoices": self.invoices, "keys": self.keys}, out)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.state_file)

    def record(self, request: Request, operation: str, outcome: str, **extra: Any) -> None:
        line = {
            "operation": operation,
            "method": request.method,
            "path": request.url.path,
            "query": str(request.url.query),
            "key": request.headers.get("idempotency-key"),
            "trace_id": request.headers.get("x-trace-id"),
            "authorized": self.authorized(request),
            "outcome": outcome,
            **extra,
        }
        with self.ledger.open("a") as out:
            out.write(json.dumps(line) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def next_fault(self, operation: str) -> dict[str, Any] | None:
        queue = self.faults.get(operation)
        return queue.pop(0) if queue else None

    def authorized(self, request: Request) -> bool:
        return self.token is None or request.headers.get("authorization") == f"Bearer {self.token}"


def problem(status: int, title: str, detail: str, kind: str = "about:blank") -> JSONResponse:
    body = {"type": kind, "title": title, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def make_app(api: Api) -> Starlette:
    async def guarded(request: Request, operation: str, effect: Any) -> Response:
        """Authentication, the fault hook, and Idempotency-Key processing around one effect."""
        if not api.authorized(request):
            api.record(request, operation, "unauthorized")
            return problem(401, "Unauthorized", "A valid bearer token is required.")
        body = await request.body()
        payload = json.loads(body) if body else None
        fault = api.next_fault(operation)
        if fault and fault["fault"] == "rate_limit":
            api.record(request, operation, "rate_limited")
            response = problem(429, "Too Many Requests", "Slow down.")
            response.headers["Retry-After"] = "1"
            return response
        key = request.headers.get("idempotency-key")
        if key is None:
            api.record(request, operation, "rejected")
            return problem(400, "Idempotency-Key is missing", "Send an Idempotency-Key header.")
        fingerprint = hashlib.sha256(
            json.dumps([request.method, request.url.path, payload], sort_keys=True).encode()
        ).hexdigest()
        seen = api.keys.get(key)
        if seen is not None and seen["fingerprint"] != fingerprint:
            api.record(request, operation, "conflict")
            return problem(
                422,
                "Idempotency-Key is already used",
                "This Idempotency-Key was used with a different request payload.",
                "https://example.com/problems/idempotency-key-reused",
            )
        if seen is not None and "response" not in seen:
            api.record(request, operation, "in_progress")
            return problem(
                409,
                "A request is outstanding for this Idempotency-Key",
                "A request with the same Idempotency-Key is still being processed.",
                "https://example.com/problems/idempotency-key-in-progress",
            )
        if seen is not None:
            api.record(request, operation, "replayed")
            stored = seen["response"]
            replayed = {"Idempotent-Replayed": "true"}
            return JSONResponse(stored["body"], status_code=stored["status"], headers=replayed)

        api.keys[key] = {"fingerprint": fingerprint}
        if fault and fault["fault"] == "hold":
            api.record(request, operation, "held")
            gate = anyio.Path(fault["gate"])
            with anyio.fail_after(GATE_LIMIT_SECONDS):
                while not await gate.exists():  # noqa: ASYNC110 - a file the test creates
                    await anyio.sleep(GATE_POLL_SECONDS)
        status, result = effect(request, payload)
        api.keys[key] = {"fingerprint": fingerprint, "response": {"status": status, "body": result}}
        api.save()
        api.record(request, operation, "executed" if status < 400 else "refused", status=status)
        if fault and fault["fault"] == "error_after_effect":
            return JSONResponse({"error": "the gateway timed out upstream"}, status_code=503)
        if fault and fault["fault"] == "crash_after_effect":
            os._exit(3)
        return JSONResponse(result, status_code=status)

    def create(request: Request, payload: Any) -> tuple[int, Any]:
        invoice_id = f"inv_{uuid.uuid4().hex[:12]}"
        invoice = {
            "invoice_id": invoice_id,
            "customer": payload["customer"],
            "amount": payload["amount"],
            "currency": payload.get("currency", "EUR"),
            "memo": payload.get("memo"),
            "status": "open",
        }
        api.invoices[invoice_id] = invoice
        return 201, invoice

    def void(request: Request, payload: Any) -> tuple[int, Any]:
        invoice = api.invoices.get(request.path_params["invoice_id"])
        if invoice is None:
            return 404, {"type": "about:blank", "title": "Not Found", "detail": "No such invoice."}
        if invoice["status"] == "void":
            return 409, {"type": "about:blank", "title": "Conflict", "detail": "The invoice is already void."}
        invoice["status"] = "void"
        return 200, invoice

    def send(request: Request, payload: Any) -> tuple[int, Any]:
        return 202, {"queued": True, "invoice_id": request.path_params["invoice_id"]}

    async def invoices(request: Request) -> Response:
        if request.method == "POST":
            return await guarded(request, "createInvoice", create)
        if not api.authorized(request):
            api.record(request, "listInvoices", "unauthorized")
            return problem(401, "Unauthorized", "A valid bearer token is required.")
        fault = api.next_fault("listInvoices")
        if fault and fault["fault"] == "echo_error":
            api.record(request, "listInvoices", "echo_error")
            echoed = request.headers.get("authorization", "")
            return PlainTextResponse(f"internal error while serving {echoed}", status_code=500)
        found = list(api.invoices.values())
        customer = request.query_params.get("customer")
        if customer:
            found = [i for i in found if i["customer"] == customer]
        states = request.query_params.getlist("status")
        if states:
            found = [i for i in found if i["status"] in states]
        api.record(request, "listInvoices", "read")
        return JSONResponse({"invoices": found[: int(request.query_params.get("limit", "100"))]})

    async def one(request: Request) -> Response:
        if request.method == "DELETE":
            return await guarded(request, "voidInvoice", void)
        api.record(request, "getInvoice", "read")
        if not api.authorized(request):
            return problem(401, "Unauthorized", "A valid bearer token is required.")
        invoice = api.invoices.get(request.path_params["invoice_id"])
        if invoice is None:
            return problem(404, "Not Found", "No such invoice.")
        return JSONResponse(invoice)

    async def send_invoice(request: Request) -> Response:
        return await guarded(request, "sendInvoice", send)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def document(request: Request) -> Response:
        if not api.authorized(request):
            return problem(401, "Unauthorized", "A valid bearer token is required.")
        return PlainTextResponse(DOCUMENT.read_text(), media_type="application/yaml")

    async def faults(request: Request) -> Response:
        spec = await request.json()
        api.faults.setdefault(spec["operation"], []).append(spec)
        return JSONResponse({"armed": spec})

    return Starlette(
        routes=[
            Route("/invoices", invoices, methods=["GET", "POST"]),
            Route("/invoices/{invoice_id}", one, methods=["GET", "DELETE"]),
            Route("/invoices/{invoice_id}/send", send_invoice, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/openapi.yaml", document, methods=["GET"]),
            Route("/_faults", faults, methods=["POST"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765, help="0: any free port (see --port-file)")
    parser.add_argument("--ledger", type=Path, default=Path("invoices-ledger.jsonl"))
    parser.add_argument("--state", type=Path, default=Path("invoices-state.json"))
    parser.add_argument("--port-file", type=Path, help="written once the port listens")
    args = parser.parse_args(argv)
    api = Api(args.ledger, args.state, os.environ.get("INVOICES_API_TOKEN") or None)
    api.load()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    if args.port_file is not None:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(sock.getsockname()[1]))
        tmp.replace(args.port_file)
    config = uvicorn.Config(make_app(api), log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
