"""Ray started and stopped in the background (harness.ray.background, RayDispatcher):

- an error of the start or of the stop is raised in the thread that waits for it, unchanged;
- the stop runs in the thread that ran the start (Ray's GCS and raylet die with the thread that
  started them), also after a failed start;
- the driver keeps ray.init's SIGTERM handling (exit, so that ``finally`` stops Ray);
- a dispatcher whose Ray started but was never entered (an error before dispatch) leaves no Ray
  process behind once closed, nor does one that ran its block;
- a Ray of the dispatcher's own starts without the head processes a study does not use, and
  ray.init asks for its node once the GCS lists it.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading

import pytest
from conftest import PYTHON, REPO, study_file, subprocess_env, wait_untagged

from harness.ray.background import ServiceThread, start_ray


def test_a_start_error_is_raised_where_the_start_is_waited_for() -> None:
    failure = ValueError("no such node")

    def start() -> None:
        raise failure

    service = ServiceThread(start, lambda: None, "test")
    with pytest.raises(ValueError) as caught:
        service.wait_started()
    assert caught.value is failure
    service.wait_stopped()  # the start's error is not raised again by the stop


def test_the_stop_runs_in_the_thread_of_the_start_after_a_failed_start_too() -> None:
    threads: dict[str, threading.Thread] = {}

    def start() -> None:
        threads["start"] = threading.current_thread()
        raise RuntimeError("half started")

    service = ServiceThread(start, lambda: threads.setdefault("stop", threading.current_thread()), "test")
    service.wait_stopped()  # never waited for the start: its error is not the one to report
    assert threads["start"] is threads["stop"] is not threading.current_thread()


def test_a_stop_error_is_raised_by_wait_stopped_once() -> None:
    def stop() -> None:
        raise OSError(28, "No space left on device", "/runs")

    service = ServiceThread(lambda: None, stop, "test")
    service.wait_started()
    with pytest.raises(OSError, match="No space left"):
        service.wait_stopped()
    service.wait_stopped()


def test_start_ray_keeps_ray_inits_sigterm_exit_and_drops_its_thread_warning(caplog) -> None:
    warning = "SIGTERM handler is not set because current thread is not the main thread."
    logger = logging.getLogger("ray._private.worker")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            start_ray(lambda: logger.warning(warning), lambda: None).wait_stopped()
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        with pytest.raises(SystemExit) as caught:
            handler(signal.SIGTERM, None)
        assert caught.value.code == signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert warning not in caplog.text


DISPATCHERS = """
import ray
from harness.ray.dispatch import RayDispatcher

unused = RayDispatcher(num_cpus=1).start()  # an error before dispatch: started, never entered
unused.close()
assert not ray.is_initialized()
used = RayDispatcher(num_cpus=1).start()
with used:
    assert used.cluster_resources()["CPU"] == 1.0
used.close()
assert not ray.is_initialized()
print("closed")
"""


def _python(code: str, process_tag: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter whose processes carry ``process_tag`` (in ``env``, made by
    ``subprocess_env(process_tag)``, when given)."""
    return subprocess.run(
        [PYTHON, "-c", code],
        cwd=REPO,
        env=env or subprocess_env(process_tag),
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_a_closed_dispatcher_leaves_no_ray_process_entered_or_not(process_tag: str) -> None:
    result = _python(DISPATCHERS, process_tag)
    assert result.returncode == 0 and "closed" in result.stdout, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "SIGTERM" not in result.stderr, result.stderr
    assert wait_untagged(process_tag, timeout=30) == []


MONITOR_FIRST = """
import json
import ray
from harness.ray.dispatch import _shutdown

ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)  # Ray's own start
seen = {}
real_shutdown = ray.shutdown

def shutdown(*args, **kwargs):  # what ray.shutdown finds when the dispatcher's stop calls it
    node = ray._private.worker._global_node
    seen["monitor"] = [info.process.poll() for info in node.all_processes["monitor"]]
    seen["gcs"] = [info.process.poll() for info in node.all_processes["gcs_server"]]
    return real_shutdown(*args, **kwargs)

ray.shutdown = shutdown
_shutdown()
assert not ray.is_initialized()
print(json.dumps(seen))
"""


def test_the_stop_ends_the_autoscaler_monitor_before_ray_ends_the_gcs(process_tag: str) -> None:
    """Ray stops the GCS before the monitor, whose SIGTERM handler then waits on the gone GCS until
    Ray kills it a second later: the dispatcher's stop kills it first, the rest as Ray does (for
    a Ray started with its monitor: one whose internals the lean start does not know)."""
    result = _python(MONITOR_FIRST, process_tag)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["monitor"] == [-signal.SIGKILL]  # ended, by the dispatcher
    assert seen["gcs"] == [None]  # the GCS still up: ray.shutdown ends it
    assert "Traceback" not in result.stderr, result.stderr
    assert wait_untagged(process_tag, timeout=30) == []


LEAN_HEAD = """
import json
import ray
import ray._private.services as services
from ray._private.node import Node
from ray._raylet import GcsClient, NodeID
from ray.core.generated.gcs_service_pb2 import GetAllNodeInfoRequest
from harness.ray.background import wait_registered
from harness.ray.dispatch import RayDispatcher

def listed(gcs_address, node_id):  # whether the GCS lists the node now, asked directly
    selector = GetAllNodeInfoRequest.NodeSelector(node_id=NodeID.from_hex(node_id).binary())
    return bool(GcsClient(address=gcs_address).get_all_node_info(timeout=5, node_selectors=[selector]))

get_node = services.get_node
def recording_get_node(gcs_address, node_id):  # what ray.init asks once it started the raylet
    asked.append(listed(gcs_address, node_id))
    return get_node(gcs_address, node_id)
services.get_node = recording_get_node

before = {name: vars(Node)[name] for name in ("start_monitor", "start_api_server", "start_log_monitor")}
seen = {}
for verbose, ray_train in ((False, False), (True, False), (False, True)):
    asked = []
    dispatcher = RayDispatcher(num_cpus=1, verbose=verbose, ray_train=ray_train).start()
    with dispatcher:
        node = ray._private.worker._global_node
        seen[f"{verbose} {ray_train}"] = {
            "processes": sorted(node.all_processes),
            "task": ray.get(ray.remote(lambda: 41 + 1).remote()),
            "listed when asked": asked,
        }
        raylet = node.all_processes["raylet"][0].process.pid
        with open(f"/proc/{raylet}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\\0") if b"=" in kv)
        seen["raylet connect"] = [
            int(env[b"RAY_raylet_client_connect_timeout_milliseconds"]),
            int(env[b"RAY_raylet_client_num_connect_attempts"]),
        ]
        if not ray_train:
            seen["wait"] = [
                wait_registered(node.gcs_address, ray.get_runtime_context().get_node_id(), timeout=0),
                wait_registered(node.gcs_address, NodeID.from_random().hex(), timeout=0.3),
            ]
    dispatcher.close()
seen["restored"] = all(vars(Node)[name] is method for name, method in before.items())
seen["get_node restored"] = services.get_node is recording_get_node
print(json.dumps(seen))
"""


def test_a_ray_of_our_own_starts_without_the_head_processes_a_study_never_uses(process_tag: str) -> None:
    """No autoscaler monitor; no log monitor unless the worker logs go to the driver (verbose); no
    dashboard API server unless Ray Train may run (its placement-group cleaner polls the state
    API). ``ray.init`` asks the GCS for the node only once it lists it (asked before, Ray's call
    waits out a 1-second retry), and the raylet, whose object store may be late on a busy
    machine, tries its socket again after 100 ms, not 1 s. The node still runs tasks, and Ray's
    node class and services are left as they were."""
    result = _python(LEAN_HEAD, process_tag)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    listed = {"listed when asked": [True]}
    assert seen["False False"] == {"processes": ["gcs_server", "raylet"], "task": 42, **listed}
    assert seen["True False"] == {"processes": ["gcs_server", "log_monitor", "raylet"], "task": 42, **listed}
    assert seen["False True"] == {"processes": ["dashboard", "gcs_server", "raylet"], "task": 42, **listed}
    assert seen["wait"] == [True, False]  # our node at once; a node never started, not after 0.3 s
    # the raylet retries its object store's socket every 100 ms (Ray: every 1 s), as long in all
    retry_ms, attempts = seen["raylet connect"]
    assert retry_ms <= 100 and retry_ms * attempts >= 1000 * 10
    assert seen["restored"] is True
    assert seen["get_node restored"] is True
    assert wait_untagged(process_tag, timeout=30) == []


def test_a_ray_whose_node_class_differs_starts_as_it_is(monkeypatch) -> None:
    from ray._private.node import Node

    from harness.ray.background import lean_head

    monkeypatch.delattr(Node, "start_monitor")  # a Ray without the method the lean start replaces
    kept = vars(Node)["start_api_server"], vars(Node)["start_log_monitor"]
    with lean_head(log_to_driver=False, state_api=False) as lean:
        assert lean is False
        assert (vars(Node)["start_api_server"], vars(Node)["start_log_monitor"]) == kept
    assert "start_monitor" not in vars(Node)  # nothing put back that was not there


TRIAL_ENV = """
import json
import os
import time
import ray
from ray.tune import Trainable
from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, _ActorClassCache
from harness.ray.dispatch import RayDispatcher

class Probe(Trainable):
    def step(self):
        return {"env": os.environ.get("PL_DISABLE_FORK"), "pid": os.getpid(), "done": True}

def idle_workers(raylet):  # the raylet's Python workers that wait for work
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if parent == raylet and title.startswith("ray::IDLE"):
            found.add(int(entry))
    return found

before = dict(DEFAULT_ENV_VARS)
dispatcher = RayDispatcher(num_cpus=1).start()
with dispatcher:
    node = ray._private.worker._global_node
    raylet = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    deadline = time.monotonic() + 60
    while not idle_workers(raylet) and time.monotonic() < deadline:
        time.sleep(0.1)
    prestarted = idle_workers(raylet)  # idle: started and registered
    actor_class = _ActorClassCache().get(Probe)
    runtime_env = actor_class._default_options.get("runtime_env") or {}
    actor = actor_class.remote()
    result = ray.get(actor.train.remote())
    seen = {"runtime_env": runtime_env, "actor": result["env"], "prestarted": result["pid"] in prestarted}
    ray.kill(actor)
dispatcher.close()
seen["restored"] = DEFAULT_ENV_VARS == before
print(json.dumps(seen))
"""


@pytest.mark.parametrize("value", [None, "0"])
def test_trial_actors_inherit_tunes_environment_from_a_ray_of_our_own(process_tag: str, value) -> None:
    """Tune's PL_DISABLE_FORK=1 reaches each trial actor by inheritance, so no runtime
    environment (whose set-up starts an interpreter and a shell before the worker), and the actor
    runs in a worker Ray started ahead for the driver; a value of the user's that differs is left
    to Tune, which sets its own in the actor (a worker of its own)."""
    env = subprocess_env(process_tag)
    env.pop("PL_DISABLE_FORK", None)
    if value is not None:
        env["PL_DISABLE_FORK"] = value
    result = _python(TRIAL_ENV, process_tag, env)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    expected_env = {} if value is None else {"env_vars": {"PL_DISABLE_FORK": "1"}}
    assert {k: v for k, v in seen["runtime_env"].items() if v} == expected_env
    assert seen["actor"] == "1"
    assert seen["prestarted"] is (value is None)
    assert seen["restored"] is True
    assert wait_untagged(process_tag, timeout=30) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_study_that_runs_ray_train_gets_a_ray_with_the_state_api(tmp_path, monkeypatch, workers) -> None:
    """Ray Train (resources.workers > 1) polls the state API: the study's dispatcher asks for it."""
    from harness.ray.dispatch import RayDispatcher
    from harness.runner import dispatcher_for, prepare

    monkeypatch.setattr(RayDispatcher, "start", lambda self: self)  # no Ray: the choice alone
    run = prepare(study_file(tmp_path, "pick", resources={"cpu": 1, "workers": workers}), tmp_path / "runs")
    assert dispatcher_for(run).ray_train is (workers > 1)
