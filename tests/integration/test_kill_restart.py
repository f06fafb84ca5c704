"""Crash recovery and clean stops of the real command: `mailtrap-sync sync` as a subprocess
against the Mailtrap double served on 127.0.0.1, killed with SIGKILL in every phase of a run,
or stopped with SIGTERM/SIGINT.

A ``Tripwire`` (tests.support.tripwire) in front of the double lets the test strike at a chosen
moment: it holds the nth request of a kind before or after the double serves it (so the process
is killed with that request in flight), or tells the test once the answer went out. The source
is a SQLite file the test edits between runs (with list moves and deletions, tests.support.churn,
for the SIGKILL test); the state store is another SQLite file the test reads between runs.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from starlette.types import ASGIApp

from sync_service.diff import TOMBSTONE
from sync_service.models import BatchStatus, Position, RunOutcome
from sync_service.state import StateStore
from sync_service.state.tables import batches
from sync_service.testing.mailtrap.double import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_TOKEN,
    ImportPolicy,
    MailtrapDouble,
    RateLimits,
    serve,
)
from tests.support.churn import UNMANAGED, Churn, ChurnSource, assert_audience, churn
from tests.support.harness import FIELDS, T0, Source, customers
from tests.support.tripwire import Tripwire

PIPELINE = "customers"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class _Served:
    """What ``serve`` needs of a double: its ASGI app."""

    app: ASGIApp


CONFIG = """
lease_ttl = "1s"

[state]
url = "{state}"

[mailtrap]
api_url = "{api_url}"
account_id = {account}
timeout = 5
poll_interval = 0.05
poll_max_interval = 0.1

[mailtrap.pacing]
account = "{pacing}"
token = "100000/10s"

[[pipelines]]
name = "customers"
lists = ["Customers"]
batch_size = 100
{audience}
[pipelines.source]
connector = "sql"
url = "{source}"
table = "customers"
key = "id"
cursor = "updated_at"
lookback = 0
{deleted}
[pipelines.mapping.fields]
{fields}
"""
# The audience model on top (the SIGKILL test): lists by plan, soft deletes, a key scan for
# hard deletes on every run, and a brake that holds more than 100 removals at once.
AUDIENCE = """on_delete = "remove_from_lists"
delete_scan_every = 1
max_delete_count = 100

[pipelines.lists_by_column]
column = "plan"
values = { pro = "Pro customers", free = "Free users" }
"""


@dataclass
class World:
    """The served double, the source, the state store, and how to start the command."""

    double: MailtrapDouble
    tripwire: Tripwire
    source: Source
    store: StateStore
    config: Path
    logs: Path
    started: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """`mailtrap-sync sync [args]` in a subprocess, its output in logs/run-N.log (a hung
        one dumps its threads' stacks there on SIGABRT)."""
        self.started += 1
        env = {"MAILTRAP_API_TOKEN": DEFAULT_TOKEN, "PATH": "/usr/bin:/bin",
               "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
        with (self.logs / f"run-{self.started}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "sync_service", "--config", str(self.config),
                 "--log-format", "json", "sync", *args],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """Whatever is still running at the end: its stacks into its log, then killed."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGABRT)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)

    def run_clean(self, *args: str) -> int:
        """One run to the end; a lease left by a killed run is waited out (exit 3)."""
        for _ in range(20):
            code = self.start(*args).wait(timeout=120)
            if code != 3:
                return code
            time.sleep(0.3)
        raise AssertionError("the pipeline stayed busy")

    def watermark(self) -> Position | None:
        return self.store.get_watermark(PIPELINE)


def _world(tmp_path: Path, double: MailtrapDouble, pacing: str,
           state_url: str | None = None, *, audience: bool = False) -> Iterator[World]:
    for tag, data_type in FIELDS.items():
        double.add_field(tag, data_type)
    tripwire = Tripwire(double.app)
    source_url = f"sqlite:///{tmp_path}/crm.db"
    source = ChurnSource(source_url) if audience else Source(source_url)
    state_url = state_url or f"sqlite:///{tmp_path}/state.db"
    store = StateStore.from_url(state_url)
    store.ensure_schema()
    logs = tmp_path / "logs"
    logs.mkdir()
    with serve(_Served(tripwire)) as url:  # type: ignore[arg-type]
        config = tmp_path / "mailtrap-sync.toml"
        config.write_text(CONFIG.format(
            state=state_url, api_url=url, account=DEFAULT_ACCOUNT_ID, pacing=pacing,
            source=source.url, fields="\n".join(f'{t} = "{t}"' for t in FIELDS),
            audience=AUDIENCE if audience else "",
            deleted='deleted_column = "deleted"\n' if audience else ""))
        world = World(double, tripwire, source, store, config, logs)
        try:
            yield world
        finally:
            world.stop_all()
            tripwire.disarm()
    store.close()
    source.close()


@pytest.fixture
def world(tmp_path: Path, double: MailtrapDouble) -> Iterator[World]:
    """Slow imports (0.2 s), no rate limits: pacing is per process and restarts forget it."""
    double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=0.2)
    double.rate_limits = RateLimits(account_requests=None, token_requests=None)
    yield from _world(tmp_path, double, pacing="100000/60s")


@pytest.fixture
def churn_world(tmp_path: Path, double: MailtrapDouble) -> Iterator[World]:
    """The same, over a source with plans and soft deletes, synced with the audience model."""
    double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=0.2)
    double.rate_limits = RateLimits(account_requests=None, token_requests=None)
    yield from _world(tmp_path, double, pacing="100000/60s", audience=True)


# Each phase: (trap kind, mode, smallest nth, largest nth, longest extra delay before the kill).
PHASES: dict[str, tuple[str, str, int, int, float]] = {
    "reading": ("fields", "notify", 1, 1, 0.03),
    "before_post": ("post", "before", 2, 3, 0.0),
    "posted_no_id": ("post", "after", 2, 3, 0.0),
    "polling": ("poll", "after", 1, 6, 0.0),
    "committing": ("finished_poll", "notify", 1, 3, 0.015),
    "unlisting": ("unlist", "after", 1, 1, 0.0),  # the key scan's removals, posted, id lost
}
# A kill can orphan at most the one import in flight (accepted by Mailtrap, its id never
# recorded), and the next run posts those contacts again. "Safe" kills cannot orphan one and do
# not hold back the first post of their run (which re-posts what the last kill orphaned), so
# alternating safe and risky kills allows each contact two accepted posts at most.
SAFE = ["before_post", "polling"] * 4
RISKY = ["reading", "posted_no_id", "committing", "random", "unlisting", "committing",
         "random"]
SCHEDULE = [phase for pair in zip(SAFE, RISKY, strict=False) for phase in pair]
NEWSLETTER = range(1, 3_001, 25)  # keys whose contacts are also on a list the sync leaves alone


def _edit(world: World, rng: random.Random, round_: int) -> None:
    """Changes for the next run: 300 rows edited, then list moves and deletions (see Churn), then
    10 new rows (3,000 rows to start with)."""
    at = T0 + timedelta(hours=round_ + 1)
    edited = sorted(rng.sample(range(1, 3_001), 300))
    world.source.update(edited, at=at, first_name=f"Edit{round_}")
    churn(_churning(world), rng, at=at + timedelta(milliseconds=1), tag=str(round_),
          confirmed=lambda keys: world.store.get_contacts(PIPELINE, keys), spec=Churn())
    new = range(10_000 + 10 * round_, 10_010 + 10 * round_)
    world.source.insert(new, at=at + timedelta(seconds=1))


def _churning(world: World) -> ChurnSource:
    assert isinstance(world.source, ChurnSource)
    return world.source


def _removals(world: World) -> Callable[[bytes], bool]:
    """Which imports are a key scan's removals: exclusion-only entries for addresses whose
    keys the source no longer has."""
    gone = {row["email"] for row in _churning(world).removed.values()}

    def match(body: bytes) -> bool:
        entries = orjson.loads(body)["contacts"]
        return all(set(e) == {"email", "list_ids_excluded"} and e["email"] in gone
                   for e in entries)

    return match


def _strike(world: World, rng: random.Random, phase: str) -> tuple[str, dict[str, Any]] | None:
    """Start a run and SIGKILL it in ``phase``; None if it finished first (exit 0).

    A run that finds the lease of the last killed one still held (exit 3) is started again, so
    the schedule of phases is kept.
    """
    kind, mode, low, high, delay = PHASES.get(phase, ("", "", 0, 0, 0.0))
    nth = rng.randint(low, high)
    wait = rng.uniform(0.2, 2.0) if phase == "random" else delay * rng.random()
    match = _removals(world) if kind == "unlist" else None
    for _ in range(20):
        trap = world.tripwire.arm(kind, nth, mode, match) if phase != "random" else None
        process = world.start()
        started = time.monotonic()
        while process.poll() is None and time.monotonic() - started < 60:
            if trap is None and time.monotonic() - started >= wait:
                break
            if trap is not None and world.tripwire.hit.wait(0.02):
                time.sleep(wait)
                break
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
            world.tripwire.disarm()
            return phase, dict(trap.detail) if trap else {}
        world.tripwire.disarm()
        assert process.returncode in (0, 3), f"run {world.started} exited {process.returncode}"
        if process.returncode == 0:
            return None
        time.sleep(0.3)
    raise AssertionError("the pipeline stayed busy")


def _positions(world: World) -> dict[str, tuple[Any, int]]:
    """Each source key's current (cursor, key)."""
    with world.source.engine.connect() as conn:
        rows = conn.execute(sa.select(customers.c.id, customers.c.updated_at)).all()
    return {str(key): (cursor, key) for key, cursor in rows}


def _import_id(path: str) -> int:
    return int(path.rsplit("/", 1)[1])


def _check_after_kill(world: World, phase: str, detail: dict[str, Any],
                      seen_posted: dict[int, int]) -> None:
    """What must hold right after a kill: open batches are write-ahead, never behind the mark.

    A key the source no longer has (a key-scan removal) has no place in the cursor order: its
    removal is unconfirmed as long as the state store still tracks it as live, which is what
    makes the next key scan find it again."""
    open_batches = world.store.open_batches(PIPELINE)
    mark, positions = world.watermark(), _positions(world)
    removals: list[set[str]] = []
    for batch in open_batches:
        keys = {entry.source_key for entry in world.store.batch_entries(batch.id)}
        gone = keys - set(positions)
        assert all(mark is None or positions[k] > (mark.cursor, int(mark.key))
                   for k in keys - gone), f"watermark moved past unconfirmed batch {batch.id}"
        stored = world.store.get_contacts(PIPELINE, sorted(gone))
        assert all(k in stored and stored[k].hash != TOMBSTONE for k in gone), (
            f"removal in unconfirmed batch {batch.id} recorded as done")
        if gone == keys:
            removals.append(gone)
        if batch.status is BatchStatus.POSTED:
            assert batch.import_id is not None
            seen_posted[batch.id] = batch.import_id
    statuses = {b.status for b in open_batches}
    if phase in ("before_post", "posted_no_id", "unlisting"):
        assert BatchStatus.PENDING in statuses  # recorded before it was posted
    if phase == "unlisting":
        assert removals, "the key scan's removals were posted before they were recorded"
    if phase == "polling":
        polled = _import_id(detail["path"])
        assert polled in {b.import_id for b in open_batches}  # known id, left to poll


def test_sigkill_at_any_phase_loses_nothing_and_posts_little(churn_world: World) -> None:
    """Fourteen SIGKILLs, aimed at reading, the gap between recording and posting, a post whose
    answer is lost (of rows, and of a key scan's removals), polling and committing, and at
    random, with rows edited, moved between lists, soft-deleted, removed, brought back and added
    before each run; then the mass-delete brake holds 101 removals until --allow-mass-delete.
    At the end Mailtrap equals the source (fields and list memberships; contacts of deleted rows
    on no managed list, but still on the list the sync does not manage) and no import was posted
    more than twice.

    The data: 3,000 rows on plans pro/free/trial ("Pro customers", "Free users", no list) and
    "Customers"; per round 300 fields edited, 30 plan moves, 10 soft deletes, 5 rows removed
    (found by the key scan each run makes), 1 soft-deleted row removed, 2 soft-deleted rows
    undeleted, 2 removed keys inserted again, 10 new rows.

    "No import posted more than twice": no contact payload (email with its fields and lists,
    exactly as posted) was carried by more than two imports that Mailtrap accepted (see SAFE and
    RISKY for why two is the bound). Stronger checks back it: each kill orphans at most one
    import (one Mailtrap accepted but the state store never learned the id of), every batch
    found posted after a kill is later confirmed under that same import id (polled, not posted
    again), and no import id belongs to two batches. After each kill, every open batch's rows
    are still after the watermark, and its removals of keys gone from the source still undone
    in the state store.
    """
    world, rng = churn_world, random.Random(20260301)
    world.source.insert(range(1, 3_001))
    newsletter = world.double.add_list(UNMANAGED)
    for key in NEWSLETTER:
        world.double.add_contact(f"user{key}@example.com", list_ids=[newsletter])
    kills: list[tuple[str, dict[str, Any]]] = []
    seen_posted: dict[int, int] = {}
    for round_, phase in enumerate(SCHEDULE):
        _edit(world, rng, round_)
        struck = _strike(world, rng, phase)
        if struck is not None:
            kills.append(struck)
            _check_after_kill(world, *struck, seen_posted)
    assert len(kills) >= 12
    assert {phase for phase, _ in kills} >= {*PHASES, "random"}

    _brake(world, rng)
    assert world.store.open_batches(PIPELINE) == []
    members = {f"user{key}@example.com" for key in NEWSLETTER}
    assert_audience(world.double, _churning(world), members)
    assert _churning(world).gone() & members
    last = world.store.last_run(PIPELINE)
    assert last is not None
    assert last.outcome is RunOutcome.SUCCEEDED

    _check_posts(world, kills, seen_posted)


def _brake(world: World, rng: random.Random) -> None:
    """101 more keys removed at once (max_delete_count = 100): a clean run does its other work
    and exits 1 naming --allow-mass-delete with nobody removed; with the flag they are."""
    source = _churning(world)
    at = T0 + timedelta(hours=len(SCHEDULE) + 1)
    source.update(sorted(rng.sample(range(1, 3_001), 50)), at=at, first_name="Held")
    stored = world.store.get_contacts(PIPELINE, [str(k) for k in range(1, 3_001)])
    fresh = [k for k in range(1, 3_001) if k not in source.ever_deleted and str(k) in stored
             and stored[str(k)].hash != TOMBSTONE]
    doomed = sorted(fresh, key=lambda k: (k not in NEWSLETTER, k))[:101]
    source.remove(doomed)
    source.ever_deleted.update(doomed)

    assert world.run_clean() == 1
    assert "--allow-mass-delete" in (world.logs / f"run-{world.started}.log").read_text()
    contacts, customers_id = world.double.contacts(), _list_id(world, "Customers")
    assert all(customers_id in contacts[f"user{k}@example.com"].list_ids for k in doomed)
    expected = source.expected()
    assert {e: dict(contacts[e].fields) for e in expected} == expected  # the other work

    assert world.run_clean("--allow-mass-delete") == 0


def _list_id(world: World, name: str) -> int:
    return next(i for i, found in world.double.lists().items() if found == name)


def _check_posts(world: World, kills: list[tuple[str, dict[str, Any]]],
                 seen_posted: dict[int, int]) -> None:
    with world.store.engine.connect() as conn:
        rows = conn.execute(sa.select(batches.c.id, batches.c.import_id, batches.c.status)).all()
    recorded = [r.import_id for r in rows if r.import_id is not None]
    assert len(recorded) == len(set(recorded)), "an import id belongs to two batches"
    accepted = world.double.imports()
    orphans = [i for i in accepted if i.id not in set(recorded)]
    assert len(orphans) <= len(kills)
    by_batch = {r.id: r for r in rows}
    for batch_id, import_id in seen_posted.items():
        assert (by_batch[batch_id].status, by_batch[batch_id].import_id) == (
            BatchStatus.FINISHED, import_id), f"posted batch {batch_id} was not polled to the end"
    carried: dict[str, int] = {}
    for job in accepted:
        for contact in job.contacts:
            payload = repr(sorted((k, repr(v)) for k, v in contact.items()))
            carried[payload] = carried.get(payload, 0) + 1
    assert max(carried.values()) <= 2


def test_row_set_back_after_a_lost_import_id_is_sent_again(world: World) -> None:
    """A killed run's import that Mailtrap accepted (its id never recorded) changed 20
    contacts; the rows are set back to their confirmed values before the next run, which must
    leave Mailtrap equal to the source."""
    world.source.insert(range(1, 21))
    assert world.run_clean() == 0
    world.source.update(range(1, 21), at=T0 + timedelta(hours=1), first_name="Changed")
    world.tripwire.arm("post", 1, "after")
    process = world.start()
    assert world.tripwire.hit.wait(60), "the run never posted"
    process.kill()
    process.wait(timeout=10)
    world.tripwire.disarm()
    world.double.finish_imports()
    assert {c.fields["first_name"] for c in world.double.contacts().values()} == {"Changed"}
    for key in range(1, 21):
        world.source.update([key], at=T0 + timedelta(hours=2), first_name=f"First{key}")

    assert world.run_clean() == 0
    contacts = world.double.contacts()
    assert {e: dict(c.fields) for e, c in contacts.items()} == world.source.expected()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_ends_the_run_cleanly(world: World, signum: int) -> None:
    """SIGTERM or SIGINT as an import is accepted: no new import is posted, the process exits
    1 within 30 s with the run recorded as interrupted, and the next run finishes the job by
    polling the imports it left in flight (that one and the one before it, still running)."""
    world.source.insert(range(1, 501))
    world.double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=2.0)
    trap = world.tripwire.arm("post", 2, "notify")
    process = world.start()
    assert world.tripwire.hit.wait(60), "the run never posted its second import"
    process.send_signal(signum)  # as the job records the import and logs it
    import_id = orjson.loads(trap.detail["answer"])["id"]
    posted = len(world.double.imports())

    assert process.wait(timeout=30) == 1
    assert len(world.double.imports()) == posted
    last = world.store.last_run(PIPELINE)
    assert last is not None
    assert last.outcome is RunOutcome.INTERRUPTED
    left = world.store.open_batches(PIPELINE)
    assert [b.status for b in left] == [BatchStatus.POSTED] * len(left)
    assert [b.import_id for b in left][-1] == import_id
    assert len(left) == 2  # imports take 2 s: the first was still running too

    world.double.import_policy = ImportPolicy(polls_to_finish=None, seconds_to_finish=0.1)
    assert world.run_clean() == 0
    assert all(world.store.get_batch(b.id).status is BatchStatus.FINISHED for b in left)
    contacts = world.double.contacts()
    assert {e: dict(c.fields) for e, c in contacts.items()} == world.source.expected()
    assert len(world.double.imports()) == 5  # 500 contacts in batches of 100, none twice


_SIGNAL_DURING_A_WRITE = """
import signal, sys, threading, time
import structlog
from sync_service.logging import configure
from sync_service.wiring import stop_on_signals

writing = threading.Event()


class SlowStream:
    def isatty(self):
        return False

    def write(self, text):
        if "slow" in text and not writing.is_set():
            writing.set()
            time.sleep(1.0)  # the signal arrives while this line is being written
        return sys.__stdout__.write(text)

    def flush(self):
        sys.__stdout__.flush()


configure(json=True, stream=SlowStream())
main = threading.main_thread().ident
threading.Thread(target=lambda: writing.wait(5) and signal.pthread_kill(main, signal.SIGTERM),
                 daemon=True).start()
with stop_on_signals() as stop:
    structlog.get_logger().info("slow")
print("stopped", stop.is_set(), flush=True)
"""


def test_signal_during_a_log_write_still_stops() -> None:
    """A SIGTERM that arrives while a log line is being written still stops the process (the
    handler must not log: structlog's write lock is not re-entrant)."""
    done = subprocess.run([sys.executable, "-c", _SIGNAL_DURING_A_WRITE], cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True, timeout=20, check=False)
    # The handler's "stop.requested" line comes from a thread of its own, so it may be written
    # before or after the script's last line: what matters is that the process got there.
    lines = done.stdout.decode().splitlines()
    assert "stopped True" in lines, lines
    assert done.returncode == 0, done.stderr.decode()


@pytest.fixture
def slow_world(tmp_path: Path, double: MailtrapDouble) -> Iterator[World]:
    """Pacing of 3 requests a minute: the fourth request waits for most of a minute."""
    yield from _world(tmp_path, double, pacing="3/60s")


def test_sigterm_while_waiting_for_a_pacing_permit_exits_at_once(slow_world: World) -> None:
    """SIGTERM while the run waits for a pacing permit ends it within moments, sending nothing
    more; the batch it had recorded is abandoned by the next run, which sends everything."""
    slow_world.source.insert(range(1, 11))
    process = slow_world.start()
    deadline = time.monotonic() + 30
    while len(slow_world.double.requests()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # lists, list created, fields: the import now waits for its permit
    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=30) == 1
    assert len(slow_world.double.requests()) == 3
    last = slow_world.store.last_run(PIPELINE)
    assert last is not None
    assert last.outcome is RunOutcome.INTERRUPTED
    assert "stop requested" in (last.error or "")
    (pending,) = slow_world.store.open_batches(PIPELINE)
    assert pending.status is BatchStatus.PENDING

    config = slow_world.config.read_text()
    slow_world.config.write_text(config.replace('account = "3/60s"', 'account = "600/60s"'))
    assert slow_world.run_clean() == 0
    assert slow_world.store.get_batch(pending.id).status is BatchStatus.ABANDONED
    contacts = slow_world.double.contacts()
    assert {e: dict(c.fields) for e, c in contacts.items()} == slow_world.source.expected()
