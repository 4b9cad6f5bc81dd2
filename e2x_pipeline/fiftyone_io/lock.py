"""One writer per FiftyOne dataset at a time, across processes and output folders.

The output-folder lock (:mod:`e2x_pipeline.locking`) keeps two runs out of one folder, but two
runs with different folders may publish to the same FiftyOne dataset (a scheduled run and a
manual one). Their ``e2x_`` fields would interleave. So every publish holds a lock document in
FiftyOne's own database, collection ``e2x_locks``, ``_id`` = the dataset's name:

* acquiring is one atomic upsert that matches only a free lock (none, expired, or our own); a
  held lock makes the upsert's insert fail with a duplicate key, and the writer waits (polling),
  so concurrent publishes queue rather than fail;
* the lock has a lease (``expires``), renewed by a daemon thread while it is held: a holder
  killed with SIGKILL stops renewing and its lock frees itself after one lease (at once when
  the holder ran on this machine and its pid is gone);
* releasing deletes the document only if it still carries our token.

:func:`publishing` adds the database-gone case: a connection lost mid-publish becomes
:class:`~.db.FiftyOneUnavailable` with the dataset's name and what to rerun; the tables on disk
are complete, and the rerun rewrites the ``e2x_`` fields in place (no duplicates).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from .db import FiftyOneUnavailable, _fo

log = logging.getLogger(__name__)

COLLECTION = "e2x_locks"
LEASE_SECONDS = 60.0
WAIT_SECONDS = 1800.0  # a publish of a large dataset takes minutes; a queue should outlast it


class DatasetLockTimeout(TimeoutError):
    """Another run kept the dataset's lock longer than we were willing to wait."""


def _collection() -> Any:
    _fo()  # a clear error when the database is not there
    import fiftyone.core.odm.database as fodb

    return fodb.get_db_conn()[COLLECTION]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # BSON dates are naive UTC


def lock_holder(name: str) -> dict | None:
    """The lock document of dataset ``name``, or None when nobody holds it."""
    return _collection().find_one({"_id": name})


def _dead_local_holder(doc: dict) -> bool:
    pid = doc.get("pid")
    if doc.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def dataset_lock(
    name: str,
    run: str,
    lease_seconds: float = LEASE_SECONDS,
    wait_seconds: float = WAIT_SECONDS,
    poll_seconds: float = 0.5,
) -> Iterator[dict]:
    """Hold FiftyOne dataset ``name``'s write lock for the block (module doc); ``run`` names the
    holder (its output folder) in the waiting message of the others. Yields the lock document."""
    from pymongo.errors import DuplicateKeyError

    coll = _collection()
    token = uuid.uuid4().hex
    holder = {"run": run, "pid": os.getpid(), "host": socket.gethostname(), "token": token}
    deadline = time.monotonic() + wait_seconds
    waited = False
    while True:
        now = _now()
        free = {"_id": name, "$or": [{"expires": {"$lt": now}}, {"token": token}]}
        lease = {**holder, "expires": now + dt.timedelta(seconds=lease_seconds)}
        try:
            coll.update_one(free, {"$set": lease}, upsert=True)
            break
        except DuplicateKeyError:
            other = coll.find_one({"_id": name}) or {}
            if _dead_local_holder(other):  # killed on this machine: no need to wait out its lease
                log.warning("taking over %r's lock from dead process %s", name, other.get("pid"))
                coll.delete_one({"_id": name, "token": other.get("token")})
                continue
            if time.monotonic() > deadline:
                raise DatasetLockTimeout(
                    f"FiftyOne dataset {name!r} is still being written by run {other.get('run')} "
                    f"(pid {other.get('pid')} on {other.get('host')}) after {wait_seconds:.0f} s; "
                    "rerun when it has finished"
                ) from None
            if not waited:
                log.warning(
                    "FiftyOne dataset %r is being written by run %s (pid %s on %s); waiting",
                    name,
                    other.get("run"),
                    other.get("pid"),
                    other.get("host"),
                )
                waited = True
            time.sleep(poll_seconds)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_seconds / 3):
            with contextlib.suppress(Exception):  # a lost database ends the publish anyway
                until = _now() + dt.timedelta(seconds=lease_seconds)
                coll.update_one({"_id": name, "token": token}, {"$set": {"expires": until}})

    renewer = threading.Thread(target=renew, name=f"e2x-lock-{name}", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join(5)
        with contextlib.suppress(Exception):  # unreachable database: the lease runs out
            coll.delete_one({"_id": name, "token": token})


@contextlib.contextmanager
def publishing(name: str, run: str, rerun: str, **lock_options: Any) -> Iterator[None]:
    """Hold ``name``'s lock (:func:`dataset_lock`) and turn a database lost mid-publish into
    :class:`FiftyOneUnavailable` saying that the tables are complete and to run ``rerun`` (the
    command, quoted, as the message shows it)."""
    from pymongo.errors import PyMongoError

    try:
        with dataset_lock(name, run, **lock_options):
            yield
    except PyMongoError as err:
        uri = os.environ.get("FIFTYONE_DATABASE_URI", "<FiftyOne's own mongod>")
        raise FiftyOneUnavailable(
            f"lost FiftyOne's MongoDB at {uri} while publishing dataset {name!r} "
            f"({type(err).__name__}); the tables on disk are complete. Once the database is "
            f"back, run {rerun} to publish them (it rewrites the e2x_ fields in place, no "
            "duplicates)"
        ) from None
