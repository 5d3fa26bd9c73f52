"""All browser sessions of one demo process: creation under a cap, lookup, and the reaper.

A session is keyed by the gradio session hash of the tab that opened it; the page keeps that key in
the browser (gr.BrowserState), so a reloaded tab, which gets a new hash, is attached to its old session
(`attach`) with its answers and memory. A tab that goes away only detaches its session (`detach`); the
reaper frees it after `Limits.reattach_s` unless a tab attaches again, and any session after
`Limits.idle_timeout_s` without a user action."""

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
        self._alias: dict[str, str] = {}  # a reloaded tab's session hash -> the key of the session it shows
        self._lock = threading.Lock()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper", daemon=True)
        self._stop = threading.Event()
        self._reaper.start()

    def get(self, sid: str | None, create: bool = True) -> Session | None:
        """The session of `sid`; a new one if `create` (raises SessionLimitError when full)."""
        sid = sid or "anonymous"
        with self._lock:
            sid = self._alias.get(sid, sid)
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

    def attach(self, sid: str | None, key: str | None) -> Session | None:
        """Show tab `sid` the session stored under `key` (what the browser kept from before a reload);
        None when there is no such session (then `get(sid)` makes a new one)."""
        sid = sid or "anonymous"
        with self._lock:
            s = self._sessions.get(key) if key else None
            if s is None or s.closed:
                return None
            if key != sid:
                self._alias[sid] = key
            s.detached_at = None
            s.touch()
            return s

    def key(self, sid: str | None) -> str:
        """The key of tab `sid`'s session (for the browser to keep)."""
        sid = sid or "anonymous"
        return self._alias.get(sid, sid)

    def detach(self, sid: str | None) -> None:
        """Tab `sid` went away (closed or reloading): its session waits `reattach_s` for a tab to attach."""
        sid = sid or "anonymous"
        with self._lock:
            key = self._alias.pop(sid, sid)
            s = self._sessions.get(key)
            if s is not None and key not in self._alias.values():
                s.detached_at = time.monotonic()

    def expired(self, sid: str | None) -> bool:
        return (sid or "anonymous") in self._expired

    def close(self, sid: str | None, expired: bool = False) -> None:
        with self._lock:
            sid = self._alias.pop(sid or "anonymous", sid or "anonymous")
            s = self._sessions.pop(sid, None)
            if expired and s is not None:
                self._expired.add(sid or "anonymous")
        if s is not None:
            s.close()

    def __len__(self) -> int:
        return len(self._sessions)

    def reap(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            old = [sid for sid, s in self._sessions.items() if now - s.last_active > self.limits.idle_timeout_s
                   or (s.detached_at is not None and now - s.detached_at > self.limits.reattach_s)]
        for sid in old:
            self.close(sid, expired=True)
        return old

    def _reap_loop(self) -> None:
        period = max(1.0, min(60.0, self.limits.idle_timeout_s / 4, self.limits.reattach_s / 4))
        while not self._stop.wait(period):
            self.reap()

    def shutdown(self) -> None:
        self._stop.set()
        for sid in list(self._sessions):
            self.close(sid)
