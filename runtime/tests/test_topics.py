"""Topic creation waits until the broker lists what it created (the broker itself: tools/tests/test_kafka_commands)."""

import pytest
from aiokafka.errors import KafkaTimeoutError

from oms_runtime.topics import until_listed


class Broker:
    """An admin client whose metadata lists a topic only from the `after`-th time it is asked."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.asked = 0

    async def list_topics(self) -> list[str]:
        self.asked += 1
        return ["oms.a.v1", "oms.b.v1"] if self.asked >= self.after else ["oms.a.v1"]


async def test_created_topics_are_returned_once_the_broker_lists_them():
    broker = Broker(after=3)
    await until_listed(broker, ["oms.a.v1", "oms.b.v1"])
    assert broker.asked == 3


async def test_a_created_topic_the_broker_never_lists_is_an_error_that_names_it():
    with pytest.raises(KafkaTimeoutError, match=r"\['oms.b.v1'\]"):
        await until_listed(Broker(after=10**6), ["oms.a.v1", "oms.b.v1"], timeout=0.3)
