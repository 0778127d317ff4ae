"""`cvpipe release start|status|promote|abort`: try a challenger on a running service's live traffic (shadow or
canary), promoted or rolled back by its rules (cvpipe.serving.release). These commands talk to the service's
POST /admin/release with its admin token, as `cvpipe serve --admin-token-env` set it; the service records every
transition in the store's promotion log (`cvpipe promotions`)."""

from __future__ import annotations

import json
import os
from typing import Any, NoReturn

import typer

from cvpipe.cli.common import fail, out

app = typer.Typer(help="Shadow and canary releases of a challenger model on a running service's live traffic.",
                  no_args_is_help=True)

UrlOpt = typer.Option("http://127.0.0.1:3000", "--url", help="The running service (cvpipe serve).")
TokenEnvOpt = typer.Option("CVPIPE_ADMIN_TOKEN", "--admin-token-env",
                           help="Environment variable holding the service's admin token.")
ReasonOpt = typer.Option("", "--reason", "-r", help="Why (recorded in the promotion log).")
JsonOpt = typer.Option(False, "--json", help="Print the service's JSON answer.")


def call(url: str, token_env: str, body: dict[str, Any], timeout_s: float = 300.0) -> dict:
    """POST /admin/release; a refusal, a wrong token or an unreachable service is one clear line, exit 1."""
    import httpx

    token = os.environ.get(token_env, "")
    if not token:
        fail(f"${token_env} is empty: it must hold the service's admin token (see --admin-token-env)", 2)
    try:
        r = httpx.post(url.rstrip("/") + "/admin/release", json=body, timeout=timeout_s,
                       headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as e:
        fail(f"cannot reach the service at {url}: {e}")
    if r.status_code == 404 and _error(r) == "Not Found":
        fail(f"{url} has no release endpoint, or no admin token set (cvpipe serve --admin-token-env)")
    if r.status_code != 200:
        _refused(r)
    return r.json()


def _error(r) -> str:
    try:
        return str(r.json().get("error"))
    except ValueError:
        return r.text[:200]


def _refused(r) -> NoReturn:
    fail(f"refused ({r.status_code}): {_error(r)}")


def start(
    run_id: str = typer.Argument(..., help="model_pack run id of the challenger (see `cvpipe runs`)."),
    mode: str = typer.Option("shadow", "--mode", help="shadow: the champion answers, a share is mirrored to the "
                             "challenger; canary: the challenger answers a share of clients."),
    share: float = typer.Option(0.1, "--share", min=0.0, max=1.0, help="Share of requests (shadow) or clients "
                                "(canary, by X-Client-Id; requests without one are drawn one by one)."),
    window: float = typer.Option(60.0, "--window", help="Seconds per statistics window."),
    clean_windows: int = typer.Option(5, "--clean-windows", help="Clean windows in a row that promote."),
    min_agreement: float = typer.Option(0.7, "--min-agreement", help="Lowest box-matching F1 with the champion."),
    max_error_rate: float = typer.Option(0.01, "--max-error-rate", help="Highest challenger error rate."),
    max_latency_ratio: float = typer.Option(1.5, "--max-latency-ratio", help="Highest challenger / champion "
                                            "p95 model time."),
    min_samples: int = typer.Option(10, "--min-samples", help="Compared requests a window needs to count."),
    manual: bool = typer.Option(False, "--manual", help="Never promote automatically (rollback stays automatic)."),
    mirror_cpu_share: float = typer.Option(1.0, "--mirror-cpu-share", min=0.01, max=1.0, help="Most of one core "
                                           "the mirror process may use; copies past it are dropped (1.0: no cap "
                                           "beyond its SCHED_IDLE scheduling)."),
    reason: str = ReasonOpt, url: str = UrlOpt, token_env: str = TokenEnvOpt, as_json: bool = JsonOpt,
) -> None:
    """Load RUN_ID beside the champion (checked like a hot swap) and start a shadow or canary release."""
    if mode not in ("shadow", "canary"):
        fail(f"--mode must be shadow or canary, not {mode!r}", 2)
    plan = {"mode": mode, "share": share, "window_s": window, "clean_windows": clean_windows,
            "min_agreement": min_agreement, "max_error_rate": max_error_rate,
            "max_latency_ratio": max_latency_ratio, "min_samples": min_samples, "auto_promote": not manual,
            "mirror_cpu_share": mirror_cpu_share}
    result = call(url, token_env, {"action": "start", "run_id": run_id, "plan": plan, "reason": reason})
    _show(result, as_json)


def status(url: str = UrlOpt, token_env: str = TokenEnvOpt, as_json: bool = JsonOpt) -> None:
    """The release in progress (its windows' figures) or the last one that ended."""
    _show(call(url, token_env, {"action": "status"}), as_json)


def promote(reason: str = ReasonOpt, url: str = UrlOpt, token_env: str = TokenEnvOpt,
            as_json: bool = JsonOpt) -> None:
    """Promote the challenger now: it becomes the champion (recorded in the promotion log)."""
    _show(call(url, token_env, {"action": "promote", "reason": reason or "promoted by hand"}), as_json)


def abort(reason: str = ReasonOpt, url: str = UrlOpt, token_env: str = TokenEnvOpt, as_json: bool = JsonOpt) -> None:
    """Stop the release; the champion (which never stopped serving) keeps serving."""
    _show(call(url, token_env, {"action": "abort", "reason": reason or "aborted by hand"}), as_json)


def _show(result: dict, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(result))
        return
    rel = result.get("release") if "active" in result else result
    if not rel:
        last = result.get("last")
        out.print("no release in progress" + (f"; the last one ({last['challenger']}) ended {last['state']}"
                                                if last else ""))
        return
    out.print(f"release of [bold]{rel['challenger']}[/] against champion {rel['champion']}: [bold]{rel['state']}"
              f"[/] ({rel['mode']}, share {rel['share']}), {rel['clean_windows']} clean window(s), window "
              f"{rel['window']} ({rel['window_left_s']} s left)")
    mirror = rel.get("mirror")
    if mirror and rel["state"] == "running":
        out.print(f"  mirror process: {'running' if mirror['running'] else '[bold]not running: copies are dropped[/]'}"
                  f", {mirror['in_flight']} copies in flight"
                  + (f", scheduled {mirror['scheduling']}" if mirror.get("scheduling") else ""))
    for w in rel.get("windows", []):
        out.print(f"  window {w['index']}: {w['verdict']}: agreement {w['agreement']}, errors "
                  f"{w['challenger_errors']}/{w['challenger_calls']}, latency ratio {w['latency_ratio']}, "
                  f"score drift {w['score_drift']}, dropped {w['dropped']} {'; '.join(w['reasons'])}")


def register(main_app: typer.Typer) -> None:
    for command in (start, status, promote, abort):
        app.command(help=command.__doc__)(command)
    main_app.add_typer(app, name="release")
