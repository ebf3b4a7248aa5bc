"""Run as a script by test_consumer: read alerts in a group, never ack, wait to be killed."""

from __future__ import annotations

import sys

from skyblink.config import AlertsConfig, RedisConfig
from skyblink.storage.alerts import AlertConsumer, connect

url, stream, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
consumer = AlertConsumer(connect(RedisConfig(), url=url), group, stream=stream, consumer="victim", config=AlertsConfig())
received = consumer.poll(count=count, block_ms=5000)
print(len(received), flush=True)
sys.stdin.read()  # hold the entries unacked until the test kills this process
