"""A run's hold on its pipeline's lease (invariant 7): take it, renew it, know when it is lost.

``LeaseKeeper.held`` takes the lease for the length of a run and yields the state store fenced
with the lease's generation, so every write of the run checks that it still holds it (see
``state.leases``). Before taking the lease it tries the pipeline's ``HolderLock``: getting it
means whoever holds the lease is dead, and the lease is taken over at once; a live holder keeps
its lock, and the lease is then taken only if it is free or expired (``PipelineBusy``
otherwise). A heartbeat thread renews the lease every quarter of ``ttl``.

The lease counts as lost once a renewal finds it taken over or released, or once renewals have
failed for ``ttl`` since the last one that succeeded (measured from before it was sent, so never
later than the expiry the database recorded): from then on the run posts nothing more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from sync_service.errors import PipelineBusy, SyncError
from sync_service.state import StateStore
from sync_service.state.store import Fence

log = structlog.get_logger(__name__)


class LeaseKeeper:
    """Holds one pipeline's lease for one run at a time; see the module docstring."""

    def __init__(self, store: StateStore, pipeline: str, owner: str, ttl: float) -> None:
        self.store, self.pipeline, self.owner, self.ttl = store, pipeline, owner, ttl
        self._lost = threading.Event()
        self._holding = False
        self._renewed_at = time.monotonic()

    @contextmanager
    def held(self) -> Iterator[StateStore]:
        """Hold the lease (and the HolderLock); yields the store fenced with its generation."""
        lock = self.store.holder_lock(self.pipeline)
        try:
            dead = lock.try_acquire()
            self._renewed_at = time.monotonic()
            generation = self.store.take_lease(self.pipeline, self.owner, self.ttl, force=dead)
        except BaseException:
            lock.release()
            raise
        if generation is None:
            lock.release()
            holder = self.store.lease_holder(self.pipeline)
            who = holder[0] if holder else "another process"
            raise PipelineBusy(f"pipeline {self.pipeline} is busy: its lease is held by {who}")
        self._lost.clear()
        self._holding = True
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(done, generation), daemon=True,
                                name=f"lease-{self.pipeline}")
        beat.start()
        try:
            yield self.store.fenced(Fence(self.pipeline, self.owner, generation))
        finally:
            self._holding = False
            done.set()
            beat.join(timeout=5)
            try:
                self.store.release_lease(self.pipeline, self.owner)
            finally:
                lock.release()

    def lost(self) -> bool:
        """Whether the lease held now was lost (taken over, released, or not renewed in time)."""
        if self._holding and not self._lost.is_set() and self._expired():
            log.error("lease.expired", pipeline=self.pipeline)
            self._lost.set()
        return self._lost.is_set()

    def _expired(self) -> bool:
        return time.monotonic() - self._renewed_at >= self.ttl

    def _heartbeat(self, done: threading.Event, generation: int) -> None:
        while not done.wait(self.ttl / 4):
            attempt = time.monotonic()
            try:
                renewed = self.store.renew_lease(self.pipeline, self.owner, self.ttl, generation)
            except SyncError as exc:
                log.warning("lease.renew_failed", pipeline=self.pipeline, error=str(exc))
                if self.lost():
                    return
                continue
            if not renewed:
                log.error("lease.lost", pipeline=self.pipeline)
                self._lost.set()
                return
            self._renewed_at = attempt
