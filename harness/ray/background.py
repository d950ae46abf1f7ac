"""Ray started and stopped by a background thread, its errors raised where the driver waits.

``ray.init`` and ``ray.shutdown`` mostly wait on the processes they spawn or end, so the driver
starts Ray while it sets the study up, and stops it while it writes the report.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

_NOT_MAIN_THREAD = "SIGTERM handler is not set because current thread is not the main thread."


class ServiceThread:
    """Runs ``start()`` in a thread at once, then ``stop()`` in the same thread once :meth:`stop` is
    called. One thread for both: a process started with PR_SET_PDEATHSIG (Ray's GCS and raylet)
    is killed when the thread that started it ends, so that thread lives as long as they do.
    :meth:`wait_started` and :meth:`wait_stopped` raise what the call raised, so an error
    surfaces where the driver needs the call done, as if it had run there. The thread is a
    daemon: a driver that exits without stopping it is not held (Ray's atexit hook stops Ray)."""

    def __init__(self, start: Callable[[], object], stop: Callable[[], object], name: str) -> None:
        self._errors: dict[str, BaseException] = {}
        self._started, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(start, stop), name=name, daemon=True)
        self._thread.start()

    def _run(self, start: Callable[[], object], stop: Callable[[], object]) -> None:
        self._call("start", start)
        self._started.set()
        self._stop.wait()
        self._call("stop", stop)  # after a failed start too: it cleans up what had started

    def _call(self, stage: str, call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as err:  # raised by wait_<stage>ed(), in the thread that waits
            self._errors[stage] = err

    def wait_started(self) -> None:
        self._started.wait()
        self._raise("start")

    def stop(self) -> None:
        """Begins the stop; returns at once."""
        self._stop.set()

    def wait_stopped(self) -> None:
        self.stop()
        self._thread.join()
        self._raise("stop")

    def _raise(self, stage: str) -> None:
        error = self._errors.pop(stage, None)
        if error is not None:
            raise error


class _DropNotMainThread(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _NOT_MAIN_THREAD


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(signum)


def start_ray(init: Callable[[], object], shutdown: Callable[[], object]) -> ServiceThread:
    """``init`` (a ``ray.init``) in a background thread, which runs ``shutdown`` when stopped.
    Called from the main thread, ray.init makes SIGTERM exit the driver (so its ``finally`` blocks
    stop Ray); from another thread it logs a warning instead: the handler is set here, as ray.init
    sets it, and the warning dropped."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logger = logging.getLogger("ray._private.worker")
    if not any(isinstance(f, _DropNotMainThread) for f in logger.filters):
        logger.addFilter(_DropNotMainThread())
    return ServiceThread(init, shutdown, "ray")


# What a Ray of the driver's own, on one machine, may leave out of the head's processes: the
# autoscaler's monitor (a fixed set of CPUs: nothing to scale); the log monitor, when worker
# logs are not sent to the driver; and the dashboard's API server when Ray Train does not run
# (with include_dashboard=False it serves the state API, which Ray Train's placement-group
# cleaner polls: without it a data-parallel training waits out its timeouts, ~10 s measured;
# and it loads the usage-stats module, which RAY_USAGE_STATS_ENABLED=0 turns off). Each is a
# Python interpreter that starts beside the study's own set-up, and ray.init waits until the
# API server is up: measured on 2 cores, ray.init 1.8-2.8 s -> 1.3 s and ~0.9 s less CPU while
# the study sets up. The GCS, the raylet and the raylet's agents start as always.
MONITOR, LOG_MONITOR, API_SERVER = "start_monitor", "start_log_monitor", "start_api_server"


def _not_started(*args: object, **kwargs: object) -> None:
    return None


@contextlib.contextmanager
def lean_head(*, log_to_driver: bool, state_api: bool) -> Iterator[bool]:
    """Within the block, a Ray head started in this process (``ray.init`` without an address of
    a running Ray) leaves out the processes above that are not needed; yields whether it does. A
    Ray whose node class lacks one of those methods (its internals differ) starts as it is."""
    from ray._private.node import Node

    names = (MONITOR,) + (() if log_to_driver else (LOG_MONITOR,)) + (() if state_api else (API_SERVER,))
    saved = {name: vars(Node).get(name) for name in names}
    with _registration_awaited():
        if not all(callable(method) for method in saved.values()):
            yield False
            return
        try:
            for name in names:
                setattr(Node, name, _not_started)
            yield True
        finally:
            for name, method in saved.items():
                setattr(Node, name, method)


@contextlib.contextmanager
def _registration_awaited() -> Iterator[None]:
    """Within the block, Ray's ``services.get_node`` (which ``ray.init`` calls once it has
    started the raylet) is called only once the GCS lists the node. Asked before the raylet has
    registered, Ray's call waits out a 1-second retry (measured: the raylet registers ~0.5 s after
    its start, the call returns ~1.0 s after it was made): ``ray.init`` took 0.5 s longer on
    average, 1 s at worst. Polled every 20 ms here, the call finds the node at once."""
    import ray._private.services as services

    get_node = vars(services).get("get_node")
    if not callable(get_node):  # a Ray whose internals differ: left as it is
        yield
        return

    def get_registered_node(gcs_address: str, node_id: str) -> object:
        wait_registered(gcs_address, node_id)
        return get_node(gcs_address, node_id)

    services.get_node = get_registered_node
    try:
        yield
    finally:
        services.get_node = get_node


def wait_registered(gcs_address: str, node_id: str, timeout: float = 30.0, poll: float = 0.02) -> bool:
    """Waits until the GCS at ``gcs_address`` lists the node ``node_id`` (hex) as alive, at most
    ``timeout`` seconds; returns whether it does. Any error of the query ends the wait early
    (False): Ray's own call that follows reports what is wrong."""
    try:
        from ray._raylet import GcsClient, NodeID
        from ray.core.generated.gcs_pb2 import GcsNodeInfo
        from ray.core.generated.gcs_service_pb2 import GetAllNodeInfoRequest

        client = GcsClient(address=gcs_address)
        selector = GetAllNodeInfoRequest.NodeSelector(node_id=NodeID.from_hex(node_id).binary())
        alive = GcsNodeInfo.GcsNodeState.ALIVE
    except Exception:
        return False
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get_all_node_info(timeout=5, node_selectors=[selector], state_filter=alive):
                return True
        except Exception:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
