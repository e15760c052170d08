"""Worker threads for shipping WAL to sites."""
from __future__ import annotations

import threading
from concurrent.futures import Future


class DaemonPool:
    """Worker threads that never hold the process open (unlike ThreadPoolExecutor's, which are
    joined at exit): wal-push can leave a request to a slow site behind, spool the file for that
    site, and return to PostgreSQL."""

    def __init__(self, workers: int, name: str):
        import queue

        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.workers = workers
        for i in range(workers):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def _work(self) -> None:
        while True:
            fut, fn, args = self.q.get()
            if fut is None:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever waits on the future
                fut.set_exception(exc)

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self.q.put((fut, fn, args))
        return fut

    def close(self) -> None:
        """Let the workers end once their queued work is done (none is waited for)."""
        for _ in range(self.workers):
            self.q.put((None, None, None))
