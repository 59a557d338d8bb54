"""A brake on password guessing, shared by the protocols that check secrets (RADIUS PAP,
SMPP binds). Sans-IO: time is a parameter.

Each key (an SMPP source address; a RADIUS client and User-Name) may fail ``free`` times
within ``window_s``; after that it is held off for ``base_s``, doubling with every further
failure up to ``max_s``. While held off, attempts are refused without looking at the
secret (so guesses learn nothing) and do not lengthen the hold; a success clears the key.
Memory is bounded: past ``max_keys`` the oldest key that is not held off is forgotten.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Record:
    first: float
    failures: int = 0
    until: float = 0.0


class FailureThrottle:
    def __init__(self, *, free: int = 5, base_s: float = 1.0, max_s: float = 300.0,
                 window_s: float = 600.0, max_keys: int = 100_000):
        self.free = free
        self.base_s = base_s
        self.max_s = max_s
        self.window_s = window_s
        self.max_keys = max_keys
        self._keys: OrderedDict[Hashable, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def held(self, key: Hashable, now: float) -> float:
        """Seconds ``key`` is still held off (0 = it may try)."""
        rec = self._keys.get(key)
        if rec is None:
            return 0.0
        return max(0.0, rec.until - now)

    def failed(self, key: Hashable, now: float) -> float:
        """Count a failure; returns how long the key is now held off (0 = not)."""
        rec = self._keys.get(key)
        if rec is None or (now - rec.first > self.window_s and rec.until <= now):
            rec = _Record(first=now)
            self._keys[key] = rec
        self._keys.move_to_end(key)
        rec.failures += 1
        over = rec.failures - self.free
        if over > 0:
            rec.until = now + min(self.max_s, self.base_s * (2 ** min(over - 1, 30)))
        if len(self._keys) > self.max_keys:
            self._evict(now)
        return max(0.0, rec.until - now)

    def _evict(self, now: float) -> None:
        """Forget the oldest key that is not held off: flooding the table with new names
        must not free a key someone is guessing for (only if every key is held does the
        oldest go)."""
        for key in list(itertools.islice(self._keys, 64)):
            if self._keys[key].until <= now:
                del self._keys[key]
                return
        self._keys.popitem(last=False)

    def succeeded(self, key: Hashable) -> None:
        self._keys.pop(key, None)
