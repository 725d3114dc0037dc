"""A thread-safe token bucket that caps the request rate of a whole run (--rate-limit)."""

import threading
import time


class TokenBucket:
    """Allows `rate` acquisitions per second on average, with bursts of up to `burst` (default: one second's worth).

    Every thread and image of a run shares one bucket, so the cap is on the run, not per connection.
    """

    def __init__(self, rate, burst=None, clock=time.monotonic, sleep=time.sleep):
        if rate <= 0:
            raise ValueError('rate must be positive')
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else max(1.0, rate))
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()
        self.waited = 0.0

    def _refill(self):
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self):
        """Take one token, sleeping until one is available. Returns the seconds waited."""
        with self._lock:
            self._refill()
            # Reserve the token now (the balance may go negative) so waiting threads queue fairly instead of racing.
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            self.waited += wait
        if wait > 0:
            self._sleep(wait)
        return wait
