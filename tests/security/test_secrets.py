"""Item 1: every value a manifest took from the environment is a secret for output purposes.

Real processes: a gateway whose HTTP downstream's URL carries ``?api_key=${VAR}``, run at
DEBUG; a gateway and ``check`` whose downstream command (``${VAR}/missing-server``) does not
exist. Neither the secret nor the expanded path reaches a log line or the command's output.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from gateway.audit.redaction import SecretFilter
from gateway.manifests import load_manifests
from tests.http.test_http import http_downstream
from tests.security.kit import logged_gateway, run_cli
from tests.support import Setup, new_key, outcome

API_KEY = "sk_live_query_secret_93f1c"
TOOLS_DIR = "/opt/private-tools-7d2e"
WAIT = 60.0


def _write(setup: Setup, text: str) -> None:
    setup.manifests.mkdir(parents=True, exist_ok=True)
    (setup.manifests / "payments.toml").write_text(text)


def test_every_expanded_value_is_a_secret_wherever_it_was_expanded(tmp_path: Path) -> None:
    (tmp_path / "work-a1b2").mkdir()
    (tmp_path / "payments.toml").write_text(
        "[server]\nname = 'payments'\ncommand = '${BIN}/server'\nargs = ['--token=${TOKEN}', 'plain']\n"
        "cwd = '${WORKDIR}'\nenv = { LITERAL = 'value-kept-secret' }\n"
    )
    (tmp_path / "api.toml").write_text(
        "[server]\nname = 'api'\ntransport = 'http'\nurl = 'https://${HOST}/mcp?key=${KEY}'\n"
        "headers = { Authorization = 'Bearer ${BEARER}' }\n"
    )
    environ = {
        "BIN": "/srv/bin-9c8d",
        "TOKEN": "tok-5e6f7a",
        "WORKDIR": str(tmp_path / "work-a1b2"),
        "HOST": "api.internal.example",
        "KEY": "querykey-0a9b",
        "BEARER": "bearer-1c2d",
    }
    secrets = {spec.name: set(spec.secrets) for spec in load_manifests(tmp_path, environ)}
    assert {"/srv/bin-9c8d", "tok-5e6f7a", str(tmp_path / "work-a1b2"), "value-kept-secret"} <= secrets[
        "payments"
    ]
    assert "plain" not in secrets["payments"]
    assert {"api.internal.example", "querykey-0a9b", "Bearer bearer-1c2d", "bearer-1c2d"} <= secrets["api"]


async def test_a_secret_in_a_downstream_url_query_never_reaches_the_log(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    log = tmp_path / "gateway.log"
    async with http_downstream(setup) as url:
        _write(
            setup,
            f"[server]\nname = 'payments'\ntransport = 'http'\nurl = '{url}?api_key=${{PAYMENTS_API_KEY}}'\n",
        )
        env = {"PAYMENTS_API_KEY": API_KEY, "IDEM_GATEWAY_LOG_LEVEL": "DEBUG"}
        async with logged_gateway(setup, log, env=env) as client:
            with anyio.fail_after(WAIT):
                result = await client.call_tool(
                    "create_invoice", {"customer": "acme", "amount": 1, "idempotency_key": new_key()}
                )
    assert outcome(result) == "executed"
    logged = log.read_text()
    assert "downstream payments: ready" in logged  # the log was captured, at DEBUG
    assert API_KEY not in logged
    assert "api_key=" not in logged or "api_key=***" in logged


async def test_a_missing_command_is_reported_without_its_expanded_path(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    _write(setup, "[server]\nname = 'payments'\ncommand = '${PAYMENTS_TOOLS}/missing-server'\n")
    log = tmp_path / "gateway.log"
    env = {"PAYMENTS_TOOLS": TOOLS_DIR, "IDEM_GATEWAY_LOG_LEVEL": "DEBUG"}
    async with logged_gateway(setup, log, env=env) as client:
        with anyio.fail_after(WAIT):
            await client.list_tools()
    checked = await run_cli("check", "--manifests", str(setup.manifests), env=env)
    logged = log.read_text()
    assert "downstream payments" in logged and "not ready" in logged  # the failure was logged
    assert TOOLS_DIR not in logged
    assert checked.code == 1
    assert "did not start" in checked.stderr
    assert TOOLS_DIR not in checked.stdout + checked.stderr


def test_http_client_libraries_never_log_request_urls_at_info_or_debug() -> None:
    from gateway.cli import configure_logging

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        root.handlers.clear()
        configure_logging("DEBUG")
        for name in ("httpx2", "httpcore2"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO)
    finally:
        for handler in root.handlers:
            root.removeHandler(handler)
        root.setLevel(saved[0])
        for handler in saved[1]:
            root.addHandler(handler)


def test_the_log_filter_masks_arguments_and_exception_text_and_escapes_control_characters() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("tests.security.filter")
    logger.propagate = False
    handler = Keep()
    handler.addFilter(SecretFilter([API_KEY]))
    logger.addHandler(handler)
    try:
        logger.warning("request to %s failed", f"http://x/mcp?api_key={API_KEY}")
        try:
            raise OSError(f"connect failed: http://x/mcp?api_key={API_KEY}")
        except OSError:
            logger.exception("downstream %s", "payments")
        logger.warning("key %s refused", "\x1b]0;owned\x07\x1b[2J\nFAKE 2099 executed")
    finally:
        logger.removeHandler(handler)
    assert API_KEY not in "".join(records)
    assert "api_key=***" in records[0] and "api_key=***" in records[1]
    assert "\x1b" not in records[2] and "\n" not in records[2] and "\\x1b]0;owned" in records[2]
