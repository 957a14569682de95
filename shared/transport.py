"""Celery's Redis transport, with visibility that follows liveness and hardened against malformed messages.

**Visibility.** kombu emulates acknowledgements on Redis: a delivered message waits in the ``unacked`` hash,
scored in the ``unacked_index`` sorted set by when it was delivered, and any worker's periodic sweep hands it
out again once that score is older than the visibility timeout. Stock kombu never moves the score, so the
timeout has to outlast the longest task, and a dead worker's message then waits that long too. Here a
heartbeat thread moves the score of every message this process holds (running, reserved, or waiting out a
retry countdown) to "now" every quarter of the timeout. A live holder's messages therefore never come due,
however long they run, and a dead holder's come due one timeout after its last heartbeat: the timeout bounds
recovery instead of task length, and can be short.

**Malformed messages.** Anyone who can write to Redis can push bytes into a queue list. kombu decodes each
popped item and builds a message from it inside the worker's event loop, where an exception from a malformed
item (not JSON, or JSON without the message envelope) ends the loop and with it the worker. This transport
drops such an item with a logged error instead; well-formed messages take kombu's path unchanged, and Celery
then checks content type (JSON only) and task name as usual.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

log = logging.getLogger("augment.transport")
TRANSPORT = "shared.transport:Transport"
# Heartbeats per visibility timeout: a holder must miss this many in a row before its messages come due.
BEATS_PER_TIMEOUT = 4


def heartbeat_interval_s(visibility_timeout_s: float) -> float:
    """Seconds between the visibility heartbeats of a holder, for a visibility timeout of VISIBILITY_TIMEOUT_S."""
    return max(0.5, visibility_timeout_s / BEATS_PER_TIMEOUT)


class QoS(kombu_redis.QoS):
    """kombu's acknowledgement emulation, plus a heartbeat that keeps this channel's held messages invisible."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._held: set[str] = set()  # delivery tags delivered to this channel and not yet acked or given back
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def append(self, message: Any, delivery_tag: str) -> None:
        super().append(message, delivery_tag)
        with self._held_lock:
            self._held.add(delivery_tag)
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(target=self._beat, name="visibility-heartbeat", daemon=True)
                self._heartbeat.start()

    def ack(self, delivery_tag: str) -> None:
        self._let_go(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._let_go(delivery_tag)
        if requeue:
            # kombu requeues a rejected message at the far end of the list, behind every queued task; a message
            # handed back by a worker that is shutting down (a preempted training job) goes next in line instead.
            self.restore_by_tag(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
        else:
            super().reject(delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        # the channel is closing: what it holds goes back to its queues, and nothing is held any more
        self._stop.set()
        with self._held_lock:
            self._held.clear()
        super().restore_unacked(client)

    def _let_go(self, delivery_tag: str) -> None:
        with self._held_lock:
            self._held.discard(delivery_tag)

    def _beat(self) -> None:
        interval = heartbeat_interval_s(self.visibility_timeout)
        while not self._stop.wait(interval):
            with self._held_lock:
                tags = list(self._held)
            if not tags:
                if self.channel.closed:
                    return  # a channel dropped on a lost connection: its tasks have ended, a new one holds the rest
                continue
            try:
                with self.channel.conn_or_acquire() as client:
                    # XX: only messages still in the index; one acked or handed back meanwhile is not put back.
                    # GT: a beat that arrives late (retransmitted after a partition) carries an older time, and must
                    # not make a live holder's message look due for redelivery.
                    client.zadd(self.unacked_index_key, dict.fromkeys(tags, time.time()), xx=True, gt=True)
            except redis.RedisError as exc:
                # Redis restarting: the next beat tries again; held messages come due only after a whole timeout
                log.warning("visibility heartbeat failed (%s); retrying in %.0f s", type(exc).__name__, interval)


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # the item was already popped: dropping it here is all that is left to do
            log.error("dropped a malformed message from a queue (%s: %s)", type(exc).__name__, str(exc)[:200])
            return True


class Transport(kombu_redis.Transport):
    Channel = Channel
