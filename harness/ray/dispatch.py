"""Ray Tune dispatch: with harness.ray.trainables (what runs in a trial's worker) and
harness.ray.distributed (Ray Train), the only modules that import Ray.

Grid studies run in two phases: every distinct training config not yet in the checkpoint
store is trained once (one Tune trial each), then every sampling/evaluation trial not yet in
the ledger runs against those checkpoints. Random and Optuna searches run one phase, each
trial training its checkpoint if the store lacks it (trials sharing one wait on a lock).
With ``resources.workers`` > 1 a trial's training runs on that many Ray Train workers
(a TorchTrainer launched from inside the Tune trial), each holding the trial's cpu and gpu.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.config.study import StudySpec, axes, metric_mode, objective_modes
from harness.config.trial import TrialConfig
from harness.ray.background import ServiceThread, lean_head, start_ray
from harness.ray.distributed import check_workers_fit
from harness.ray.progress import SAMPLE, TRAIN, Progress, shorten_unwritable
from harness.ray.trainables import TrialContext, grid_trainable, search_trainable
from harness.run.plan import training_chains

# Measured necessities on a one-machine setup (see ENVIRONMENT.md): bind to loopback, no
# token file in $HOME, no usage reporting, no sync warnings.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    # Tune's own per-trial CSV and TensorBoard logs: the ledger and MLflow hold the results, and
    # the TensorBoard logger alone costs the driver a tensorboardX import (~1.5 s). The JSON
    # logger is added back by hand (Tune reads result.json back when a fit ends).
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # What Tune sets in each trial actor's runtime environment (for PyTorch Lightning); in the
    # driver's own environment too, where a Ray of the driver's own passes it to every worker.
    "PL_DISABLE_FORK": "1",
    # The raylet connects to its object store through a socket that the store's own thread
    # creates; when that thread is late (a busy machine), Ray waits 1 s before it tries again:
    # measured on 2 busy cores, 2 starts of 6 paid ~1.0 s that way (ray.init 2.7 s, not 1.9 s).
    # Tried every 100 ms instead, as often: the same 10 s before Ray gives up.
    "RAY_raylet_client_connect_timeout_milliseconds": "100",
    "RAY_raylet_client_num_connect_attempts": "100",
}


def _tune_actor_env() -> dict[str, str]:
    """The variables Tune gives each trial actor as a runtime environment (its module's dict)."""
    from ray.tune.execution import class_cache

    return class_cache.DEFAULT_ENV_VARS


DRIVER_MEMORY = 256 * 2**20  # bytes held by a training trial whose Ray Train workers do the work


def search_space(spec: StudySpec) -> dict[str, Any]:
    """The study's space as Tune distributions (dotted keys kept as flat names)."""
    from ray import tune

    space: dict[str, Any] = {}
    for axis in axes(spec):
        name, args = axis.tune_distribution()
        space[axis.key] = getattr(tune, name)(*args)
    if spec.variants:
        space["variant"] = tune.choice(list(spec.variants))
    if len(spec.seeds) > 1:
        space["seed"] = tune.choice(spec.seeds)
    return space


def _bundle(cpu: float, gpu: float, memory: float = 0.0):
    """One Tune placement group bundle of these resources."""
    from ray.tune import PlacementGroupFactory

    return PlacementGroupFactory([{"CPU": cpu, "GPU": gpu, "memory": memory}])


def _shutdown() -> None:
    """``ray.shutdown`` of a Ray this driver started, less a second of waiting: Ray ends its
    processes one after another, each given 1 s after SIGTERM, and stops the GCS before the
    autoscaler's monitor, whose SIGTERM handler then waits on the gone GCS until it is killed
    (measured: 1.0 s of the 1.3 s ``ray.shutdown`` takes here). The monitor holds no state of
    a one-machine Ray, so it is killed first (what Ray does to it a second later); a Ray whose
    internals differ is shut down as it is."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # None when joined, not started
    monitors = getattr(node, "all_processes", {}).get("monitor", [])
    for info in monitors:
        process = getattr(info, "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
    ray.shutdown()


class RayDispatcher:
    """Starts (or joins) Ray for the duration of a ``with`` block and runs Tune experiments.

    Ray's start and stop run in a background thread: :meth:`start` begins the start ahead of the
    block (the block waits for it, and raises what it raised), leaving the block begins the stop,
    and :meth:`close` waits for it. Whoever makes a dispatcher closes it, also on an error."""

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        verbose: bool = False,
        ray_train: bool = True,
    ) -> None:
        """``ray_train``: whether trials may run Ray Train (``resources.workers`` > 1), which a Ray
        of our own then starts with the state API it uses."""
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.num_cpus, self.verbose, self.ray_train = num_cpus, verbose, ray_train
        self.owned: bool | None = None  # known at start(): a Ray of the caller's is never stopped
        self._ray: ServiceThread | None = None  # an owned Ray's start and stop
        self._entered = False
        self._inherited: dict[str, str] = {}  # Tune's actor variables the workers inherit

    def start(self) -> RayDispatcher:
        """Begins starting (or joining) Ray in a background thread, once; returns at once."""
        if self.owned is not None:
            return self
        for key, value in RAY_ENV.items():
            os.environ.setdefault(key, value)
        if not self.address:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray  # here, not in the thread: no import races the driver's own

        if not self.verbose:  # quiet logs: our own progress lines only
            logging.getLogger("ray").setLevel(logging.WARNING)
            logging.getLogger("ray.tune").setLevel(logging.WARNING)
            shorten_unwritable(logging.getLogger("ray"))
        self.owned = not ray.is_initialized()  # a Ray started by the caller (tests) is reused, not stopped
        if self.owned:
            self._ray = start_ray(self._init, _shutdown)
        return self

    def _init(self) -> None:
        import ray

        if self.address:
            ray.init(address=self.address, log_to_driver=self.verbose, logging_level=self._level)
        else:
            # "local": a Ray of our own, even when another was started on this machine with
            # `ray start` (a bare ray.init() would attach to that one, and die with it).
            with lean_head(log_to_driver=self.verbose, state_api=self.ray_train):
                ray.init(
                    address="local",
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    log_to_driver=self.verbose,
                    _node_ip_address="127.0.0.1",
                    logging_level=self._level,
                )

    def __enter__(self) -> RayDispatcher:
        self.start()
        if self._ray is not None and not self._entered:
            self._entered = True
            import ray.tune  # noqa: F401 (its ~0.6 s of imports while Ray comes up, not after)

            self._ray.wait_started()
            if not self.address:
                self._inherit_actor_env()
        return self

    @property
    def _level(self) -> int:
        return logging.INFO if self.verbose else logging.WARNING

    def _inherit_actor_env(self) -> None:
        """A runtime environment makes Ray start a trial's worker through its runtime-env set-up,
        an interpreter and a shell before the worker's own (~0.3 s a worker, measured). The
        workers of a Ray of the driver's own inherit the driver's environment: each variable Tune
        would set to the value the driver already holds is left out of Tune's until the block
        ends. What Tune adds on top (cloud credentials, Ray Train's) still goes through the set-up.
        Without a runtime environment a trial also runs in one of the workers Ray starts for the
        first driver (a worker per CPU, started while the driver imports Ray Tune), its own start
        and Ray's import (~0.5 s) done before Tune asks for it."""
        env = _tune_actor_env()
        self._inherited = {k: v for k, v in env.items() if os.environ.get(k) == v}
        for key in self._inherited:
            del env[key]

    def __exit__(self, *exc: object) -> None:
        if self._inherited:
            _tune_actor_env().update(self._inherited)
            self._inherited = {}
        if self._ray is not None:
            self._ray.stop()

    def close(self) -> None:
        """Stops an owned Ray and waits until it is down. The error of a start that no block
        waited for is not raised: the driver's own error, which kept it from dispatching, is."""
        if self._ray is not None:
            self._ray.wait_stopped()

    def cluster_resources(self) -> dict[str, float]:
        import ray

        return dict(ray.cluster_resources())

    def _with_workers(self, spec: StudySpec, ctx: TrialContext, trial_share: bool) -> TrialContext:
        """The context with the study's training workers, refused if the cluster cannot hold them."""
        if spec.resources.workers > 1:
            check_workers_fit(spec.resources, self.cluster_resources(), trial_share)
        return replace(ctx, workers=spec.resources.workers)

    def _tune(
        self,
        trainable,
        param_space: dict,
        *,
        name: str,
        spec: StudySpec,
        ctx: TrialContext,
        num_samples: int,
        progress: Progress,
        search_alg=None,
        scheduler=None,
        resources: Any = None,
    ) -> None:
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback

        resources = resources or {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=num_samples,
                max_concurrent_trials=spec.concurrency,
                search_alg=search_alg,
                scheduler=scheduler,
                reuse_actors=True,
                trial_dirname_creator=lambda t: f"{name}_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str((Path(ctx.study_dir) / "ray").resolve()),
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                verbose=1 if self.verbose else 0,
                # result.json only (the results Tune reads back at the end of fit), no CSV or
                # TensorBoard logs: see TUNE_DISABLE_AUTO_CALLBACK_LOGGERS in RAY_ENV
                callbacks=[progress.callback, JsonLoggerCallback()],
            ),
        )
        tuner.fit()

    def run_grid(
        self,
        spec: StudySpec,
        trainings: list[TrialConfig],
        trials: list[TrialConfig],
        ctx: TrialContext,
        on_complete: Callable[[], None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        """Every pending training first, then every pending sampling trial; one Tuner, so that a
        worker that trained serves sampling trials after it with everything loaded. A trial whose
        training is still running waits for it on the store's lock (never trains it twice),
        holding its share. With Ray Train workers (``resources.workers`` > 1) the trainings run
        on those workers, not on Tune's, so there is nothing to carry over, and a sampling trial
        waiting on its share could starve the workers its training waits for: trainings and
        trials then run as two Tuners, one after the other. ``on_start``: called in the driver
        once the first job's worker is up, before any job runs (:class:`Progress`)."""
        from ray import tune

        ctx = self._with_workers(spec, ctx, trial_share=False)
        dump = lambda t: t.model_dump(mode="json")  # noqa: E731
        chains = training_chains(trainings)  # train.steps as an axis: one job trains them all
        jobs = [{"kind": TRAIN, "trial": dump(c[-1]), "chain": [dump(t) for t in c[:-1]]} for c in chains]
        jobs += [{"kind": SAMPLE, "trial": dump(t)} for t in trials]
        if not jobs:
            return
        phases = [jobs]
        resources: Any = None  # the study's cpu and gpu per job
        if ctx.workers > 1:
            phases = [jobs[: len(chains)], jobs[len(chains) :]]
            # With Ray Train workers a training job only waits on them: it holds no CPU or GPU
            # (Tune needs some resource: a little memory; the workers hold their own share).
            waiting = _bundle(0, 0, DRIVER_MEMORY)
            working = _bundle(spec.resources.cpu, spec.resources.gpu)

            def resources(config: dict[str, Any]):
                return waiting if config["job"]["kind"] == TRAIN else working

        progress = Progress({"train": len(chains), "trial": len(trials)}, on_complete, on_start=on_start)
        for phase in (p for p in phases if p):
            self._tune(
                tune.with_parameters(grid_trainable, ctx=ctx),
                {"job": tune.grid_search(phase)},
                name="study" if len(phases) == 1 else f"study-{phase[0]['kind']}",
                spec=spec,
                ctx=ctx,
                num_samples=1,
                progress=progress,
                resources=resources,
            )

    def run_search(
        self,
        spec: StudySpec,
        ctx: TrialContext,
        on_complete: Callable[[], None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

        ctx = self._with_workers(spec, ctx, trial_share=True)
        mode = metric_mode(spec)
        search_alg = None
        if spec.search.algorithm == "optuna":
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            objectives = spec.search.objectives  # several: TPE's multi-objective mode, a Pareto front
            search_alg = OptunaSearch(
                metric=list(objectives) if objectives else spec.metric,
                mode=objective_modes(spec) if objectives else mode,
                sampler=optuna.samplers.TPESampler(seed=spec.search.seed),
            )
        scheduler = FIFOScheduler()
        if spec.scheduler.name == "asha":
            scheduler = ASHAScheduler(
                metric=spec.metric,
                mode=mode,
                grace_period=spec.scheduler.grace_period,
                reduction_factor=spec.scheduler.reduction_factor,
            )
        progress = Progress({"trial": spec.search.num_trials}, on_complete, on_start=on_start)
        trainable = tune.with_parameters(search_trainable, ctx=ctx, spec=spec)
        self._tune(
            trainable,
            search_space(spec),
            name="search",
            spec=spec,
            ctx=ctx,
            num_samples=spec.search.num_trials,
            progress=progress,
            search_alg=search_alg,
            scheduler=scheduler,
        )
