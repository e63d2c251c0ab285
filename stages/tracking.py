"""Optional wandb tracking of a stage: off unless params turn it on, never in the way of the work.

- `tracking.wandb: online` with no API key stops the stage before any work (exit 2, one line naming
  `wandb login` and `tracking.wandb: offline`); `check-graph`, the first stage, checks it too.
- Any wandb failure once work has begun (no network, a server error) is one warning line: tracking
  is off for the rest of the stage, which finishes and keeps its artifacts. The project's own metrics
  files are the record.
- wandb is imported only when tracking is on.
"""
from __future__ import annotations

import netrc
import os
import sys

from params import Params, ParamsError
from params.record import unrecorded

WANDB_HOST = "api.wandb.ai"


def wandb_key_problem(params: Params) -> str | None:
    """Why `online` tracking cannot start here (no API key), or None."""
    if params.tracking.wandb != "online" or os.environ.get("WANDB_API_KEY"):
        return None
    try:
        path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
        if os.path.exists(path) and netrc.netrc(path).authenticators(WANDB_HOST):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return ("tracking.wandb: online needs a W&B API key and none is set (WANDB_API_KEY, ~/.netrc): "
            "run `wandb login`, or set tracking.wandb: offline (sync later) or disabled")


def _warn(what: str, err: BaseException) -> None:
    line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"warning: wandb {what} failed ({type(err).__name__}: {line[:160]}); tracking is off for the "
          f"rest of this stage, its artifacts and metrics files are unaffected", file=sys.stderr)


class tracking:
    """Optional wandb run for one stage, grouped by experiment; off unless params turn it on."""

    current = None

    def __init__(self, ctx):
        self.ctx = ctx

    def __enter__(self):
        t = self.ctx.params.tracking
        if t.wandb == "disabled":
            return self
        problem = wandb_key_problem(self.ctx.params)
        if problem:
            raise ParamsError(problem)
        try:
            import wandb  # imported only when used

            group = t.group or os.environ.get("DVC_EXP_NAME") or "default"
            with unrecorded():  # logging the whole config is not the stage reading it
                config = self.ctx.params.model_dump(mode="json")
            timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", 30))
            tracking.current = wandb.init(project=t.project, group=group, mode=t.wandb,
                                          name=f"{self.ctx.kind}-t{self.ctx.task}-r{self.ctx.round}",
                                          job_type=self.ctx.kind, config=config,
                                          reinit="finish_previous", settings=wandb.Settings(init_timeout=timeout))
        except Exception as err:  # noqa: BLE001 — whatever wandb raises, the stage goes on
            _warn("init", err)
            tracking.current = None
        return self

    def __exit__(self, *exc):
        run, tracking.current = tracking.current, None
        if run is not None:
            try:
                run.finish(exit_code=1 if exc[0] else 0)
            except Exception as err:  # noqa: BLE001
                _warn("finish", err)
        return False


def _send(payload_of, step: int | None = None) -> None:
    """Log what `payload_of()` builds to the stage's wandb run, when there is one."""
    if tracking.current is None:
        return
    try:
        tracking.current.log(payload_of(), step=step)
    except Exception as err:  # noqa: BLE001
        _warn("log", err)
        tracking.current = None


def log(metrics: dict, step: int | None = None) -> None:
    _send(lambda: metrics, step)


def log_image(key: str, path: str) -> None:
    def payload():
        import wandb

        return {key: wandb.Image(path)}

    _send(payload)


def log_table(key: str, frame) -> None:
    def payload():
        import wandb

        return {key: wandb.Table(dataframe=frame)}

    _send(payload)
