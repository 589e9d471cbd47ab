"""The `oms` command without a broker: help texts, input validation, clear errors, the routing HTTP call."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from oms_tools.errors import FAILED, INVALID, UNREACHABLE

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"

COMMANDS = [
    [],
    ["topics"],
    ["topics", "create"],
    ["demo"],
    ["demo", "network"],
    ["demo", "stock"],
    ["demo", "order"],
    ["demo", "ship"],
    ["dlq"],
    ["dlq", "tail"],
    ["dlq", "replay"],
    ["outbox"],
    ["outbox", "parked"],
    ["outbox", "retry"],
    ["outbox", "drop"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "oms")
def test_help(oms, command: list[str]) -> None:
    result = oms(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: oms" in result.output
    assert "--help" in result.output


def test_groups_without_a_command_show_their_help(oms) -> None:
    result = oms("demo")
    assert "order" in result.output and "ship" in result.output
    assert result.exit_code == 2


def _plain(output: str) -> str:
    """Click's usage error as one line of words, without the boxes rich draws around it."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


# Kafka is never reached in these: validation comes first.
NO_KAFKA = ["--bootstrap", "127.0.0.1:1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["topics", "create", "--bootstrap", "localhost"], "'localhost' is not host:port"),
        (["topics", "create", "--bootstrap", "127.0.0.1:99999"], "is not host:port"),
        (["topics", "create", "--partitions", "0", *NO_KAFKA], "--partitions"),
        (["topics", "create", "--replication-factor", "0", *NO_KAFKA], "--replication-factor"),
        (["demo", "order", "--sku", "NOPE", *NO_KAFKA], "'NOPE' is not in the demo catalogue"),
        (["demo", "order", "--sku", "TENT-2P:0", *NO_KAFKA], "at least 1"),
        (["demo", "order", "--sku", "TENT-2P:two", *NO_KAFKA], "whole number"),
        (["demo", "order", "--country", "US", *NO_KAFKA], "no demo address in 'US'"),
        (["demo", "order", "--backorder-policy", "maybe", *NO_KAFKA], "--backorder-policy"),
        (["demo", "ship", "--source", "bad code", *NO_KAFKA], "'bad code' is not a source code"),
        (["demo", "ship", "--delay", "-1", *NO_KAFKA], "--delay"),
        (["demo", "stock", "--reference", " ", *NO_KAFKA], "--reference"),
        (["demo", "network", "--url", "ftp://x"], "'ftp://x' is not an http(s) URL"),
        (["demo", "network", "--token", "two words"], "no spaces"),
    ],
)
def test_invalid_options_are_usage_errors(oms, args: list[str], message: str) -> None:
    result = oms(*args)
    assert result.exit_code == INVALID, result.output
    assert message in _plain(result.output), result.output
    assert "Traceback" not in result.output


def test_an_invalid_order_is_refused_before_publishing(oms) -> None:
    result = oms("demo", "order", "--channel", "x" * 65, "--bootstrap", "127.0.0.1:1")
    assert result.exit_code == INVALID, result.output
    assert "the order would not be valid" in result.output
    assert "channel" in result.output


def test_missing_or_broken_demo_files_are_named(oms, tmp_path: Path) -> None:
    result = oms("demo", "network", "--file", str(tmp_path / "none.json"))
    assert result.exit_code == INVALID
    assert f"no such file: {tmp_path / 'none.json'}" in result.stderr

    broken = tmp_path / "stock.json"
    broken.write_text(json.dumps({"stock": [{"sku": "TENT-2P", "source_code": "WH-MARS", "quantity": 3}]}))
    result = oms("demo", "stock", "--file", str(broken), "--bootstrap", "127.0.0.1:1")
    assert result.exit_code == INVALID
    assert "WH-MARS not in the network" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["topics", "create"],
        ["demo", "stock"],
        ["demo", "order"],
        ["demo", "ship", "--once"],
        ["dlq", "tail"],
        ["dlq", "replay", "--topic", "oms.channel.orders.v1"],
    ],
    ids=" ".join,
)
def test_a_broker_that_is_down_is_one_clear_line(oms, args: list[str]) -> None:
    result = oms(*args, "--bootstrap", "127.0.0.1:1")
    assert result.exit_code == UNREACHABLE, result.output
    assert result.stderr.strip() == "error: cannot reach Kafka at 127.0.0.1:1"
    assert "Traceback" not in result.output


def test_the_bootstrap_comes_from_the_environment(oms) -> None:
    result = oms("topics", "create", env={"OMS_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == UNREACHABLE
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr


# oms demo network against a stand-in routing service ---------------------------------------------------------------


class _Routing(BaseHTTPRequestHandler):
    status = 200
    answer: bytes = b""
    seen: list[tuple[str, str, str | None, dict]] = []  # noqa: RUF012 - one stand-in per test, reset by the fixture

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.answer or json.dumps(body).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def routing() -> Iterator[tuple[str, type[_Routing]]]:
    handler = type("Routing", (_Routing,), {"seen": [], "status": 200, "answer": b""})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_demo_network_puts_each_source_of_the_file_with_the_token(oms, routing) -> None:
    url, handler = routing
    result = oms("demo", "network", "--url", url + "/", "--token", "tok-1")
    assert result.exit_code == 0, result.output
    expected = json.loads((DEMO / "network.json").read_text())["sources"]
    assert [(method, path, auth) for method, path, auth, _ in handler.seen] == [
        ("PUT", f"/network/sources/{s['code']}", "Bearer tok-1") for s in expected
    ]
    assert [body["code"] for *_, body in handler.seen] == [s["code"] for s in expected]
    assert handler.seen[0][3]["cost_per_shipment"] == expected[0]["cost_per_shipment"]
    assert "5 sources from" in result.stdout
    assert "no other source touched" in result.stdout
    assert "DROP-ACME" in result.stdout


def test_demo_network_shows_the_refusal(oms, routing) -> None:
    url, handler = routing
    handler.status = 422
    refusal = {"detail": [{"loc": ["body", "code"], "msg": "the body's code is not the path's"}]}
    handler.answer = json.dumps(refusal).encode()
    result = oms("demo", "network", "--url", url)
    assert result.exit_code == FAILED
    assert f"PUT {url}/network/sources/WH-EAST answered 422 Unprocessable Entity" in result.stderr
    assert "the body's code is not the path's" in result.stderr


def test_demo_network_when_routing_is_down(oms) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    result = oms("demo", "network", "--url", f"http://127.0.0.1:{port}")
    assert result.exit_code == UNREACHABLE
    assert f"cannot reach the routing service at http://127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.output
