"""All browser sessions of one demo process: creation under a cap, lookup, and the idle reaper."""

from __future__ import annotations

import copy
import threading
import time

from .session import Session
from .state import Limits, SessionLimitError, Settings


class SessionManager:
    """All sessions of one demo process, with the caps and the idle reaper."""

    def __init__(self, engine, defaults: Settings | None = None, limits: Limits | None = None):
        self.engine = engine
        self.defaults = defaults or Settings()
        self.limits = limits or Limits()
        self._sessions: dict[str, Session] = {}
        self._expired: set[str] = set()
        self._lock = threading.Lock()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper", daemon=True)
        self._stop = threading.Event()
        self._reaper.start()

    def get(self, sid: str | None, create: bool = True) -> Session | None:
        """The session of `sid`; a new one if `create` (raises SessionLimitError when full)."""
        sid = sid or "anonymous"
        with self._lock:
            s = self._sessions.get(sid)
            if s is not None or not create:
                return s
            if len(self._sessions) >= self.limits.max_sessions:
                raise SessionLimitError(
                    f"The demo is at its limit of {self.limits.max_sessions} concurrent sessions; please try "
                    "again in a few minutes (idle sessions are freed automatically).")
            self._expired.discard(sid)
            s = Session(sid, self.engine, copy.deepcopy(self.defaults), self.limits)  # no dict shared between tabs
            self._sessions[sid] = s
            return s

    def expired(self, sid: str | None) -> bool:
        return (sid or "anonymous") in self._expired

    def close(self, sid: str | None, expired: bool = False) -> None:
        with self._lock:
            s = self._sessions.pop(sid or "anonymous", None)
            if expired and s is not None:
                self._expired.add(sid or "anonymous")
        if s is not None:
            s.close()

    def __len__(self) -> int:
        return len(self._sessions)

    def reap(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            old = [sid for sid, s in self._sessions.items() if now - s.last_active > self.limits.idle_timeout_s]
        for sid in old:
            self.close(sid, expired=True)
        return old

    def _reap_loop(self) -> None:
        period = max(1.0, min(60.0, self.limits.idle_timeout_s / 4))
        while not self._stop.wait(period):
            self.reap()

    def shutdown(self) -> None:
        self._stop.set()
        for sid in list(self._sessions):
            self.close(sid)
