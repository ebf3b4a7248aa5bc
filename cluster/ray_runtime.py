"""
Start or join Ray for one command.

``ray.address`` unset or ``"local"`` starts a local Ray for the duration of the command; ``"auto"``
or ``ray://host:port`` joins a running cluster. A Ray that this process already initialised (a
test's session fixture, a notebook) is reused and left running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from skyblink.config import RayConfig

__all__ = ["ray_session"]

log = logging.getLogger(__name__)


@contextmanager
def ray_session(config: RayConfig) -> Iterator[None]:
    """
    Make Ray available inside the ``with`` block.

    Parameters
    ----------
    config : RayConfig
        ``address`` (unset/"local": start a local Ray; "auto" or a ray:// URL: join) and
        ``num_cpus`` of a local Ray.

    Raises
    ------
    ConnectionError
        A cluster address was given and no Ray is reachable there.
    """
    if ray.is_initialized():
        yield
        return
    # Ray workers are separate processes: they must import this same skyblink, and they should
    # not each spin up as many BLAS threads as there are cores.
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if config.address in (None, "local"):
        log.info("starting a local Ray (num_cpus=%s)", config.num_cpus or "all")
        # The local Ray's processes inherit this process's environment at start: set there, the
        # variables need no job runtime_env, so the task workers that Ray pre-starts for the
        # first driver (plain workers) run the night's first tasks. With a runtime_env they
        # cannot, and every first task paid a fresh process (issue 22: the ingest's cold start).
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            ray.init(
                num_cpus=config.num_cpus,
                include_dashboard=False,
                log_to_driver=True,
                logging_level=logging.WARNING,
            )
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    else:
        log.info("joining Ray at %s", config.address)
        ray.init(address=config.address, logging_level=logging.WARNING, runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()
