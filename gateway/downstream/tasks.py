"""Tasks through the gateway: task ids namespaced per server, every task request to its owner.

A server that supports tasks (2025-11-25 core tasks; the 2026-07-28 tasks extension,
``io.modelcontextprotocol/tasks``) may answer a ``tools/call`` with a task handle instead of
a result. Through the gateway the handle's id becomes ``<server>/<its id>``, so the ids of two
servers never collide and ``tasks/get``, ``tasks/result``, ``tasks/cancel``, ``tasks/update``
go to the server (the principal's session) that made the task; ``tasks/list`` is every
server's list. A keyed tool's stored result is its task handle: a retried call replays the
same handle and so re-attaches to the task instead of starting a second one.

Tasks pass within an era (a 2025-11-25 client and server, or a 2026-07-28 client and server
of the extension); the gateway does not translate one era's tasks into the other's.
"""

from __future__ import annotations

from typing import Any, Final

from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from gateway.downstream.relay import TASKS_EXTENSION

SEPARATOR: Final = "/"
EXTENSION: Final = TASKS_EXTENSION
METHODS: Final = ("tasks/get", "tasks/result", "tasks/cancel", "tasks/update", "tasks/list")


def expose_id(server: str, task_id: str) -> str:
    return f"{server}{SEPARATOR}{task_id}"


def owner(exposed: object) -> tuple[str, str]:
    """``(server, its task id)`` of an exposed task id."""
    if isinstance(exposed, str) and SEPARATOR in exposed:
        server, _, task_id = exposed.partition(SEPARATOR)
        if server and task_id:
            return server, task_id
    raise MCPError(code=INVALID_PARAMS, message=f"Unknown task: {exposed}")


def expose(server: str, result: dict[str, Any]) -> dict[str, Any]:
    """A result or notification with every task id in it made the gateway's."""
    out = result
    task = result.get("task")
    if isinstance(task, dict) and isinstance(task.get("taskId"), str):  # 2025-11-25 CreateTaskResult
        out = {**result, "task": {**task, "taskId": expose_id(server, task["taskId"])}}
    if isinstance(result.get("taskId"), str) and "status" in result:  # a Task (and the 2026 handle)
        out = {**out, "taskId": expose_id(server, result["taskId"])}
    if isinstance(result.get("tasks"), list):  # tasks/list
        out = {**out, "tasks": [expose(server, t) if isinstance(t, dict) else t for t in result["tasks"]]}
    return out


def is_handle(result: dict[str, Any]) -> bool:
    """A task handle in place of a tool result (2025-11-25 ``task``, 2026-07-28 ``resultType: task``)."""
    return isinstance(result.get("task"), dict) or result.get("resultType") == "task"
