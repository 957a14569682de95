"""The dashboard's web layer: server-rendered pages (Jinja2, autoescaped), a JSON API the pages poll, and the
security around them. It reads through :mod:`producer.dashboard.data` only.

Security: a loopback bind needs no token; any other bind refuses to start without ``AUGMENT_DASHBOARD_TOKEN`` (or
``AUGMENT_DASHBOARD_TOKEN_FILE``), and then every request must carry it, as ``Authorization: Bearer`` or as the
session cookie that the login form sets (an HMAC of the token, never the token itself), compared in constant
time. The token never appears in a page or a URL. The Content-Security-Policy allows scripts, styles and images
from the dashboard itself only (plus ``data:`` images for shard samples): no inline script runs, so a value that
slipped through escaping still could not execute.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import redis
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from producer.dashboard.data import DashboardData, JobNotFound, state_name
from shared.contracts import RECORD_KINDS
from shared.lifecycle import CANCELLED, FAILURE, PENDING, PROGRESS, RETRY, STARTED, SUCCESS
from shared.settings import Settings, SettingsError, secret
from shared.storage import StorageError

TOKEN_ENV = "AUGMENT_DASHBOARD_TOKEN"
SESSION_COOKIE = "augment_dashboard"
# A custom header that a cross-site form or image cannot send: a POST without it is not from the dashboard's script.
ACTION_HEADER = "x-augment-dashboard"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})
HERE = Path(__file__).resolve().parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
log = logging.getLogger("augment.dashboard")
STATES = tuple(state_name(state) for state in (PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE, CANCELLED))


def is_loopback(host: str) -> bool:
    """Only the loopback names people mean by "this machine only"; every other address needs the token."""
    return host in LOOPBACK_NAMES


def dashboard_token(host: str, env: dict[str, str] | None = None) -> str:
    """The token HOST needs: "" on loopback; elsewhere the configured one, or SettingsError saying how to set it."""
    token = secret(os.environ if env is None else env, TOKEN_ENV)
    if not is_loopback(host) and not token:
        raise SettingsError(
            f"binding {host} exposes the dashboard beyond this machine; set {TOKEN_ENV} (or {TOKEN_ENV}_FILE) to a "
            "long random value (e.g. `openssl rand -hex 24`), or bind 127.0.0.1"
        )
    return token


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"augment-dashboard-session", hashlib.sha256).hexdigest()


class Security(BaseHTTPMiddleware):
    """Security headers on every response; the token check on every request when a token is set."""

    def __init__(self, app: Any, token: str):
        super().__init__(app)
        self.token = token
        self.session = session_value(token) if token else ""

    def authorised(self, request: Request) -> bool:
        if not self.token:
            return True
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), self.token.encode()):
            return True
        return hmac.compare_digest(request.cookies.get(SESSION_COOKIE, "").encode(), self.session.encode())

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        response: Response
        if path == "/login" or path.startswith("/static/") or self.authorised(request):
            response = await call_next(request)
        elif path.startswith("/api/"):
            response = JSONResponse({"error": "unauthorised: send the dashboard token"}, status_code=401)
        else:
            response = RedirectResponse("/login", status_code=303)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def create_app(data: DashboardData, token: str = "", allow_cancel: bool = False, loopback_only: bool = True) -> Starlette:
    """The dashboard over DATA. LOOPBACK_ONLY also refuses other Host headers, so a web page on another origin
    cannot reach it through DNS rebinding."""
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    templates.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True, default=str)

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(
            allow_cancel=allow_cancel, login=bool(token), kinds=RECORD_KINDS, states=STATES, path=request.url.path, **context
        )
        return HTMLResponse(html, status_code=status_code)

    async def jobs_page(request: Request) -> Response:
        return page(request, "jobs.html", kind=request.query_params.get("kind", ""), state=request.query_params.get("state", ""))

    async def jobs_api(request: Request) -> Response:
        params = request.query_params
        limit = int(params["limit"]) if params.get("limit", "").isdigit() else 500
        rows = await run_in_threadpool(data.jobs, min(limit, 5000), params.get("kind", ""), params.get("state", ""))
        return JSONResponse({"jobs": rows})

    async def job_page(request: Request) -> Response:
        job = await run_in_threadpool(data.job, request.path_params["job_id"])
        return page(request, f"{job['kind']}.html" if job["kind"] in RECORD_KINDS else "job_base.html", job=job)

    async def job_api(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(data.job, request.path_params["job_id"]))

    async def job_file(request: Request) -> Response:
        body = await run_in_threadpool(data.job_file, request.path_params["job_id"], request.path_params["name"])
        return Response(body, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    async def cancel_api(request: Request) -> Response:
        if not allow_cancel:
            return JSONResponse({"error": "this dashboard was started without --allow-cancel"}, status_code=403)
        if request.headers.get(ACTION_HEADER) != "cancel":
            return JSONResponse({"error": f"missing the {ACTION_HEADER} header"}, status_code=403)
        state = await run_in_threadpool(data.cancel, request.path_params["job_id"])
        return JSONResponse({"state": state})

    async def workers_page(request: Request) -> Response:
        return page(request, "workers.html")

    async def workers_api(request: Request) -> Response:
        return JSONResponse({"workers": await run_in_threadpool(data.fleet.workers)})

    async def login(request: Request) -> Response:
        if not token:
            return RedirectResponse("/", status_code=303)
        if request.method == "POST":
            form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
            given = (form.get("token") or [""])[0]
            if hmac.compare_digest(given.encode(), token.encode()):
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="strict")
                return response
            return page(request, "login.html", status_code=401, failed=True)
        return page(request, "login.html", failed=False)

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": f"no job {exc}"}, status_code=404)
        return page(request, "missing.html", status_code=404, heading="Not found",
                    what=f"no job {exc}: the jobs page lists the known ones")

    async def server_error(request: Request, exc: Exception) -> Response:
        # logged with its traceback, shown as one line: a page that fails says so, and the log says where
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        message = f"the dashboard failed to build this page ({type(exc).__name__}: {exc}); its log has the traceback"
        if request.url.path.startswith("/api/"):
            response: Response = JSONResponse({"error": message}, status_code=500)
        else:
            response = page(request, "missing.html", status_code=500, heading="Server error", what=message)
        response.headers["Content-Security-Policy"] = CSP  # outside the Security middleware, which did not finish
        return response

    async def unavailable(request: Request, exc: Exception) -> Response:
        message = f"{type(exc).__name__}: {exc}" if isinstance(exc, StorageError) else "Redis is unreachable"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=503)
        return page(request, "missing.html", status_code=503, heading="Unavailable", what=message)

    routes = [
        Route("/", jobs_page),
        Route("/api/jobs", jobs_api),
        Route("/jobs/{job_id}", job_page),
        Route("/api/jobs/{job_id}", job_api),
        Route("/jobs/{job_id}/files/{name:path}", job_file),
        Route("/api/jobs/{job_id}/cancel", cancel_api, methods=["POST"]),
        Route("/workers", workers_page),
        Route("/api/workers", workers_api),
        Route("/login", login, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(Security, token=token)]
    if loopback_only:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=sorted(LOOPBACK_NAMES)))
    handlers: dict[Any, Callable[..., Any]] = {
        JobNotFound: not_found, StorageError: unavailable, redis.RedisError: unavailable, Exception: server_error,
    }
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)


def build(host: str, allow_cancel: bool, settings: Settings | None = None) -> Starlette:
    """The dashboard for a bind on HOST: checks the token rule and connects to Redis (fails fast) before anything binds."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise SettingsError(f"--host {host!r} is not an IP address; use e.g. 127.0.0.1 or 0.0.0.0") from None
    token = dashboard_token(host)
    data = DashboardData.connect(settings or Settings.from_env())
    return create_app(data, token=token, allow_cancel=allow_cancel, loopback_only=is_loopback(host))
