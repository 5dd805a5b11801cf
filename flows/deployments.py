"""Deployments of the flows, with the config's cron schedules, served by ``anomaly serve``."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.runner import Runner

from anomaly.config import load_config
from flows.promote import promote_flow
from flows.score import score_flow_for
from flows.tasks import SERVE_PID
from flows.train import train_flow

#: seconds ``serve`` waits, once stopped, for its last logs and events to reach the server
DRAIN_SECONDS = 10

#: one run at a time; a run due while another is running is cancelled, so missed or slow
#: scoring runs coalesce into the next one instead of piling up
ONE_AT_A_TIME = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


@flow(name="retrain")
def retrain_flow(config_path: str) -> dict[str, object]:
    """Train a challenger, then run the promotion gate on it."""
    trained = train_flow(config_path)
    return {"train": trained, "promote": promote_flow(config_path)}


def deployments(config_path: str | Path) -> list[RunnerDeployment]:
    """The deployments ``serve`` runs: scheduled scoring, scheduled retraining, and
    on-demand train/promote/score."""
    path = str(Path(config_path).resolve())
    config = load_config(path)
    tz = config.schedule.timezone
    params = {"config_path": path}

    def cron(expression: str | None) -> list[CronSchedule] | None:
        return [CronSchedule(cron=expression, timezone=tz)] if expression else None

    return [
        score_flow_for(config).to_deployment(
            name=f"{config.name}-score",
            schedules=cron(config.schedule.score),
            parameters=params,
            concurrency_limit=ONE_AT_A_TIME,
            description="score new inbox batches with the champion",
        ),
        retrain_flow.to_deployment(
            name=f"{config.name}-retrain",
            schedules=cron(config.schedule.train),
            parameters=params,
            concurrency_limit=ONE_AT_A_TIME,
            description="train a challenger, then run the promotion gate",
        ),
        train_flow.to_deployment(
            name=f"{config.name}-train", parameters=params, concurrency_limit=ONE_AT_A_TIME
        ),
        promote_flow.to_deployment(
            name=f"{config.name}-promote", parameters=params, concurrency_limit=ONE_AT_A_TIME
        ),
    ]


class _Runner(Runner):
    """Prefect's runner, stopped by SIGTERM and SIGINT alike. Prefect's own SIGTERM handler
    calls the async ``stop`` without awaiting it ("coroutine 'Runner.astop' was never
    awaited") and exits from inside the event loop."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stopping: set[asyncio.Task[None]] = set()

    def handle_sigterm(self, *_: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon_threadsafe(lambda: self._stopping.add(loop.create_task(self._stop())))

    async def _stop(self) -> None:
        while not self.started:  # a signal during registration: stop once started
            await asyncio.sleep(0.1)
        await self.astop()


def serve_deployments(runnable: list[RunnerDeployment]) -> None:
    """Serve the deployments until SIGTERM or SIGINT; returns normally after either (flow
    runs in progress are cancelled; an unfinished batch is recovered by the next run)."""

    os.environ[SERVE_PID] = str(os.getpid())  # its flow-run processes die with it

    async def main() -> None:
        runner = _Runner(pause_on_shutdown=True)
        signal.signal(signal.SIGINT, runner.handle_sigterm)  # start() sets SIGTERM's itself
        for deployment in runnable:
            await runner.aadd_deployment(deployment)
        await runner.start()

    asyncio.run(main())
    # the runner's last logs and events (a cancelled run's) go out now, while the server is
    # up: left to the exit, they were retried against the stopped server for ~70 s
    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=DRAIN_SECONDS)
