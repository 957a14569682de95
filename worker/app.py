"""The Celery app of the workers. Start it with ``augment worker`` (or ``celery -A worker.app worker``)."""

from __future__ import annotations

from shared.broker import make_celery
from shared.settings import Settings

app = make_celery(Settings.from_env(), include=["worker.tasks"])
# A worker outlives Redis restarts: it reconnects for as long as it takes (the producer gives up after a few tries).
app.conf.broker_connection_max_retries = None
