"""`augment dashboard`: a read-only web UI over the job system (see :mod:`producer.dashboard.app`)."""
