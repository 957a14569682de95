"""Celery's Redis transport, hardened against messages that are not kombu messages.

Anyone who can write to Redis can push bytes into a queue list. kombu decodes each popped item and builds a
message from it inside the worker's event loop, where an exception from a malformed item (not JSON, or JSON
without the message envelope) ends the loop and with it the worker. This transport drops such an item with a
logged error instead; well-formed messages take kombu's path unchanged, and Celery then checks content type
(JSON only) and task name as usual.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger("augment.transport")
TRANSPORT = "shared.transport:Transport"


class Channel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # the item was already popped: dropping it here is all that is left to do
            log.error("dropped a malformed message from a queue (%s: %s)", type(exc).__name__, str(exc)[:200])
            return True


class Transport(kombu_redis.Transport):
    Channel = Channel
