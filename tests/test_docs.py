"""Documents generated from code stay true to it."""

from urllib.parse import unquote

from oms_tools import asyncapi


def test_the_checked_in_asyncapi_documents_match_the_services():
    stale = [
        name
        for name, document in asyncapi.documents().items()
        if not (asyncapi.DOCS / f"{name}.json").exists()
        or (asyncapi.DOCS / f"{name}.json").read_text() != asyncapi.render(document)
    ]
    assert not stale, f"docs/asyncapi/ is stale for {stale}: run `make asyncapi` and commit the result"


def test_every_topic_a_service_subscribes_to_has_a_publisher_documented_somewhere():
    documents = asyncapi.documents()
    received, sent = set(), set()
    for document in documents.values():
        for operation in document["operations"].values():
            address = document["channels"][unquote(operation["channel"]["$ref"].removeprefix("#/channels/"))]["address"]
            (received if operation["action"] == "receive" else sent).add(address)
    outside = {"oms.channel.orders.v1", "oms.inventory.receipts.v1", "oms.fulfillment.updates.v1"}
    assert received - outside <= sent, f"consumed but published by no service: {received - outside - sent}"
