"""Settings that pin a training job's torch threads.

Two jobs end with the same weights only when they ran with the same thread count (worker.threads), so tests that
compare two jobs bit for bit pin it; a resumed or continued job pinned to the other count must keep the one it
recorded.
"""

from shared.settings import Settings

ONE_THREAD, TWO_THREADS = Settings(torch_threads=1), Settings(torch_threads=2)
