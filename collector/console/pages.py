"""The console's pages, each answering one question an analyst asks. Every read goes
through the caller's `Scope` (collector/query/scope.py), the code the gRPC analyst service
uses; every view of an incident and every action is written to the audit trail."""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from collector.console import charts, i18n, queries
from collector.console.html import Markup, esc, join, render, tag
from collector.console.server import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    HttpError,
    Request,
    Response,
    valid_zone,
)
from collector.query.actions import NotAllowed, publish_intel
from collector.query.scope import OutsideScope
from collector.store import AlertFilter
from common import identity as rules

if TYPE_CHECKING:
    from collector.console.server import Console, Handler

SEVERITIES = {1: "info", 2: "low", 3: "medium", 4: "high", 5: "critical"}
STATUSES = {1: "open", 2: "acknowledged", 3: "closed"}
PAGE = 50
KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
# What the indicator search box takes, by shape (the correlation rules' kind names).
JA3_RE = re.compile(r"^[0-9a-f]{32}$")
JA4_RE = re.compile(r"^[tqd][0-9a-z]{2}[di][0-9]{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$")
HASH_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
NAV = (
    ("/", "Overview", "o"),
    ("/incidents", "Incidents", "i"),
    ("/alerts", "Alerts", "a"),
    ("/fleet", "Fleet", "f"),
    ("/intel", "Intel", "n"),
    ("/audit", "Audit", "l"),
)


def _N(text: str) -> str:
    """Marks a string for the catalogue; translated where shown."""
    return text


for _s in (*SEVERITIES.values(), *STATUSES.values()):
    _N(_s)


def indicator_kinds(value: str) -> tuple[str, ...]:
    """The kinds a typed indicator may be, from its shape."""
    import ipaddress

    try:
        ipaddress.ip_address(value)
        return ("ip",)
    except ValueError:
        pass
    if JA3_RE.match(value):
        return ("ja3", "hash")
    if JA4_RE.match(value):
        return ("ja4",)
    if HASH_RE.match(value):
        return ("hash",)
    return ("domain", "sni")


class Pages:
    def __init__(self, app: Console) -> None:
        self.app = app
        self.store = app.store
        self.cache = queries.Cached(app.cfg["overview_cache_seconds"])
        self.routes: dict[tuple[str, str], tuple[Callable, bool]] = {
            ("GET", "/login"): (self.login_form, True),
            ("POST", "/login"): (self.login, True),
            ("POST", "/login/certificate"): (self.login_certificate, True),
            ("POST", "/logout"): (self.logout, False),
            ("GET", "/"): (self.overview, False),
            ("GET", "/incidents"): (self.incidents, False),
            ("GET", "/alerts"): (self.alerts, False),
            ("GET", "/fleet"): (self.fleet, False),
            ("GET", "/intel"): (self.intel, False),
            ("POST", "/intel"): (self.intel_publish, False),
            ("GET", "/audit"): (self.audit_log, False),
            ("GET", "/events"): (self.events, False),
            ("POST", "/preferences"): (self.preferences, False),
        }

    def route(self, req: Request) -> tuple[Callable, bool] | None:
        method = "GET" if req.method == "HEAD" else req.method
        found = self.routes.get((method, req.path))
        if found:
            return found
        m = re.fullmatch(r"/incidents/([^/]+)(/stix|/status)?", req.path)
        if m:
            key = urllib.parse.unquote(m.group(1))
            what = m.group(2) or ""
            page = {
                ("GET", ""): self.incident,
                ("GET", "/stix"): self.incident_stix,
                ("POST", "/status"): self.incident_status,
            }.get((method, what))
            if page is None:
                return None
            return (lambda r, h: page(r, key)), False
        return None

    # Frame ------------------------------------------------------------------------------

    def frame(self, req: Request, page: str, title: str, main: object, status: int = 200):
        _ = req._
        s = req.session
        nav = join(
            tag(
                "a",
                _(label),
                href=href,
                aria_current="page" if href == page else None,
                data_key=key,
            )
            for href, label, key in NAV
        )
        who: Markup = Markup("")
        if s is not None:
            who = render(
                "who.html",
                name=s.name,
                role=s.role,
                csrf=s.csrf,
                signout=_("Sign out"),
                lang_label=_("Language"),
                tz_label=_("Time zone"),
                tz=s.tz,
                fr_selected=Markup(" selected" if s.lang == "fr" else ""),
                en_selected=Markup(" selected" if s.lang == "en" else ""),
                save=_("Apply"),
                back=req.path,
            )
        body = render(
            "layout.html",
            lang=req.lang,
            title=title,
            page=page,
            skip=_("Skip to content"),
            navlabel=_("Sections"),
            nav=nav if s is not None else "",
            who=who,
            main=main,
            keys_help=_("Keys: g then o/i/a/f/n/l to change page, / to search, j/k to move"),
            new_incident=_("New incident"),
            updated_incident=_("Incident updated"),
            live=Markup(' data-live="1"') if s is not None else "",
        )
        return Response(status, body.encode())

    def when(self, req: Request, t: float | None) -> Markup:
        if not t:
            return Markup("–")
        d = dt.datetime.fromtimestamp(t, req.tz)
        return tag("time", d.strftime("%Y-%m-%d %H:%M:%S"), datetime=d.isoformat())

    def parse_when(self, req: Request, text: str, name: str) -> float | None:
        """A datetime-local field ("2026-12-03T09:30") read in the analyst's time zone."""
        if not text:
            return None
        try:
            d = dt.datetime.fromisoformat(text)
        except ValueError:
            raise HttpError(400, f"{name}: {req._('not a date and time')}") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=req.tz)
        return d.timestamp()

    def severity(self, req: Request, n: int) -> Markup:
        name = SEVERITIES.get(n, str(n))
        return tag("span", req._(name), class_=f"sev sev{n}")

    def status(self, req: Request, n: int) -> Markup:
        name = STATUSES.get(n, str(n))
        return tag("span", req._(name), class_=f"status st-{name}")

    def region_asked(self, req: Request, asked: str) -> str:
        try:
            return req.scope.region_for(asked)
        except OutsideScope as exc:
            raise HttpError(403, str(exc)) from None

    # Sign-in ----------------------------------------------------------------------------

    def _login_cookie(self, req: Request) -> tuple[str, list[tuple[str, str]]]:
        token = req.cookies.get(LOGIN_COOKIE, "")
        if len(token) == 43:
            return token, []
        token = secrets.token_urlsafe(32)
        return token, [
            (
                "Set-Cookie",
                f"{LOGIN_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=3600",
            )
        ]

    def login_form(self, req: Request, handler: Handler, error: str = "", status: int = 200):
        if req.session is not None:
            return Response.redirect("/")
        _ = req._
        token, headers = self._login_cookie(req)
        cert = req.certificate
        cert_form: object = ""
        if cert is not None:
            cert_form = render(
                "login_cert.html",
                csrf=token,
                lang=req.lang,
                label=_("Sign in with my certificate") + f" ({cert.name}, {cert.role})",
            )
        main = render(
            "login.html",
            csrf=token,
            lang=req.lang,
            other_lang="en" if req.lang == "fr" else "fr",
            other_lang_name="English" if req.lang == "fr" else "Français",
            next=_safe_next(req.query.get("next", "/")),
            error=tag("p", error, class_="error", role="alert") if error else "",
            user=_("Name"),
            password=_("Password"),
            code=_("Code from your authenticator app"),
            submit=_("Sign in"),
            cert=cert_form,
            totp_hidden=Markup("" if self.app.accounts.totp_required else " hidden"),
        )
        resp = self.frame(req, "/login", _("Sign in"), main, status)
        resp.headers += headers
        return resp

    def _signed_in(self, req: Request, name: str, role: str, via: str) -> Response:
        tz = req.form.get("tz", "")
        tz = tz if valid_zone(tz) else self.app.default_tz
        lang = req.lang
        sid, _s = self.app.accounts.open_session(name, role, tz, lang)
        self.app.audit(name, role, "ConsoleSignIn", f"via={via}", "ok")
        resp = Response.redirect(_safe_next(req.form.get("next", "/")))
        resp.headers += [
            ("Set-Cookie", f"{SESSION_COOKIE}={sid}; Path=/; Secure; HttpOnly; SameSite=Strict"),
            (
                "Set-Cookie",
                f"{LOGIN_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
            ),
        ]
        return resp

    def login(self, req: Request, handler: Handler):
        _ = req._
        name = req.form.get("user", "").strip()[:64]
        shown = name if name.isprintable() else "?"
        wait = self.app.throttle.wait(req.client)
        if wait > 0:
            self.app.audit(shown, "", "ConsoleSignIn", "via=password", "throttled")
            resp = self.login_form(
                req, handler, _("Too many attempts: wait a few minutes and try again."), 429
            )
            resp.headers.append(("Retry-After", str(int(wait) + 1)))
            return resp
        result = self.app.accounts.sign_in(
            name, req.form.get("password", ""), req.form.get("code", "")
        )
        if result.outcome != "ok":
            self.app.throttle.failed(req.client)
            self.app.audit(shown, "", "ConsoleSignIn", "via=password", result.outcome)
            if result.outcome == "account_locked":
                resp = self.login_form(
                    req, handler, _("Too many attempts: wait a few minutes and try again."), 429
                )
                resp.headers.append(("Retry-After", str(int(result.retry_after) + 1)))
                return resp
            return self.login_form(req, handler, _("Wrong name, password or code."), 401)
        self.app.throttle.succeeded(req.client)
        return self._signed_in(req, name, result.role, "password")

    def login_certificate(self, req: Request, handler: Handler):
        cert = req.certificate
        if cert is None:
            raise HttpError(403, "no client certificate")
        return self._signed_in(req, cert.name, cert.role, "certificate")

    def logout(self, req: Request, handler: Handler):
        s = req.session
        self.app.accounts.close_session(req.sid)
        self.app.audit(s.name, s.role, "ConsoleSignOut", "", "ok")
        resp = Response.redirect("/login")
        resp.headers.append(
            (
                "Set-Cookie",
                f"{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
            )
        )
        return resp

    def preferences(self, req: Request, handler: Handler):
        tz = req.form.get("tz", "")
        lang = req.form.get("lang", "")
        self.app.accounts.update_session(
            req.sid,
            tz=tz if valid_zone(tz) else None,
            lang=lang if lang in i18n.LANGUAGES else None,
        )
        return Response.redirect(_safe_next(req.form.get("next", "/")))

    # Overview ---------------------------------------------------------------------------

    def overview(self, req: Request, handler: Handler):
        _ = req._
        scope = req.scope
        now = time.time()
        taken, data = self.cache.get(("overview", scope.role), lambda: self._overview(scope))
        incidents = data["open"]
        head = join(tag("th", _(label), scope="col") for _limit, label in queries.AGE_BUCKETS)
        rows = join(
            Markup("<tr>")
            + tag("th", self.severity(req, sev), scope="row")
            + join(
                tag(
                    "td",
                    tag(
                        "a",
                        n,
                        href=f"/incidents?status=open&severity={sev}",
                    )
                    if n
                    else "0",
                    class_="num",
                )
                for n in counts
            )
            + Markup("</tr>")
            for sev, counts in sorted(incidents.items(), reverse=True)
        )
        table = (
            Markup('<table class="grid-table"><thead><tr><th></th>')
            + head
            + Markup("</tr></thead><tbody>")
            + rows
            + Markup("</tbody></table>")
        )
        hourly = data["hourly"]
        start_hour = int(taken // 3600) * 3600
        hours = [start_hour - 3600 * i for i in range(23, -1, -1)]
        detectors = sorted({d for _h, d in hourly})
        day_chart = charts.stacked_bars(
            [dt.datetime.fromtimestamp(h, req.tz).strftime("%H h") for h in hours],
            {d: [hourly.get((h, d), 0) for h in hours] for d in detectors},
            title=_("Alerts per hour by detector, last 24 hours"),
        )
        today = dt.datetime.fromtimestamp(taken, req.tz).date()
        days = [today - dt.timedelta(days=i) for i in range(6, -1, -1)]
        per_day: dict[str, list[int]] = {d: [0] * 7 for d in detectors}
        for (h, d), c in hourly.items():
            day = dt.datetime.fromtimestamp(h, req.tz).date()
            if day in days:
                per_day[d][days.index(day)] += c
        week_chart = charts.stacked_bars(
            [d.strftime("%d/%m") for d in days],
            per_day,
            title=_("Alerts per day by detector, last 7 days"),
        )
        active = self._ranking(req, data["ghts"], "ght", _("Most active GHTs, last 24 hours"))
        if scope.national:
            active += self._ranking(
                req, data["regions"], "region", _("Most active regions, last 24 hours")
            )
        dark = data["dark"]
        dark_rows = join(
            Markup("<tr>")
            + tag("td", a["ght"])
            + tag("td", a["finess"])
            + tag("td", a["region"])
            + tag("td", self.when(req, a["last_seen"]))
            + Markup("</tr>")
            for a in dark
        )
        dark_html = (
            (
                Markup("<table><thead><tr>")
                + join(
                    tag("th", _(h), scope="col")
                    for h in ("GHT", "FINESS", "Region", "Last heartbeat")
                )
                + Markup("</tr></thead><tbody>")
                + dark_rows
                + Markup("</tbody></table>")
            )
            if dark
            else tag("p", _("Every site has been heard from."), class_="ok")
        )
        main = render(
            "overview.html",
            open_title=_("Open incidents by severity and age"),
            open_table=table,
            day_chart=day_chart,
            week_chart=week_chart,
            active=active,
            dark_title=_("Sites gone dark"),
            dark=dark_html,
            taken=_("Counts as of") + " ",
            taken_at=self.when(req, taken),
            age=f"({round(now - taken)} s)",
        )
        return self.frame(req, "/", _("Overview"), main)

    def _overview(self, scope) -> dict[str, Any]:
        now = time.time()
        since_day = now - 86400
        silent = now - self.app.silent_after
        dark = [a for a in scope.agents(self.store) if a["last_seen"] < silent]
        sites = queries.active_sites(self.store, scope, since_day)
        regions: dict[str, int] = {}
        for _ght, region, c in sites:
            regions[region] = regions.get(region, 0) + c
        return {
            "open": queries.open_incidents(self.store, scope, now),
            "hourly": queries.alerts_by_hour(self.store, scope, now - 7 * 86400),
            "ghts": [(g, c) for g, _r, c in sites[:10]],
            "regions": sorted(regions.items(), key=lambda x: -x[1])[:10] if scope.national else [],
            "dark": sorted(dark, key=lambda a: a["last_seen"])[:50],
        }

    def _ranking(self, req: Request, counts: list, field: str, title: str) -> Markup:
        if not counts:
            return tag("section", tag("h2", title) + tag("p", req._("No alerts.")))
        top = counts[0][1] or 1
        items = join(
            Markup("<li>")
            + tag("a", k, href=f"/alerts?{field}={urllib.parse.quote(k)}")
            + Markup(f'<meter min="0" max="{top}" value="{c}"></meter>')
            + tag("span", c, class_="num")
            + Markup("</li>")
            for k, c in counts
        )
        return tag("section", tag("h2", title) + tag("ol", items, class_="ranking"), class_="card")

    # Incidents --------------------------------------------------------------------------

    def incident_row(self, req: Request, r: dict[str, Any]) -> Markup:
        sites = req.scope.sites(r.get("sites", []))
        ghts = sorted({s["ght"] for s in sites})
        return (
            Markup(f'<tr data-key="{esc(r["key"])}">')
            + tag("td", self.severity(req, r["severity"]))
            + tag("td", self.status(req, r["status"]))
            + tag(
                "td",
                tag(
                    "a", r["subject"] or r["key"], href=f"/incidents/{urllib.parse.quote(r['key'])}"
                ),
            )
            + tag("td", r["rule"])
            + tag("td", ", ".join(ghts[:4]) + (" …" if len(ghts) > 4 else ""))
            + tag("td", r["alert_count"], class_="num")
            + tag("td", self.when(req, r["first_seen"]))
            + tag("td", self.when(req, r["last_seen"]))
            + Markup("</tr>")
        )

    def incident_head(self, req: Request) -> Markup:
        _ = req._
        return join(
            tag("th", _(h), scope="col")
            for h in (
                "Severity",
                "Status",
                "Subject",
                "Rule",
                "GHT",
                "Alerts",
                "First seen",
                "Last seen",
            )
        )

    def incidents(self, req: Request, handler: Handler):
        _ = req._
        q = req.query
        status_name = q.get("status", "open")
        status = {v: k for k, v in STATUSES.items()}.get(status_name, 0)
        severity = _int(q.get("severity", ""), 0, 5)
        region = self.region_asked(req, q.get("region", ""))
        before = _int(q.get("before", ""), 0, 2**63 - 1) or None
        rows = self.store.list_incidents(
            status=status,
            min_severity=severity,
            rule=q.get("rule", "")[:64],
            region=region,
            ght=q.get("ght", "")[:64],
            since=self.parse_when(req, q.get("since", ""), "since"),
            until=self.parse_when(req, q.get("until", ""), "until"),
            before_seq=before,
            limit=PAGE + 1,
        )
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        from collector.correlate.rules import RULES

        filters = render(
            "incident_filters.html",
            status_label=_("Status"),
            status_options=_options(
                [
                    ("open", _("open")),
                    ("acknowledged", _("acknowledged")),
                    ("closed", _("closed")),
                    ("any", _("any")),
                ],
                status_name,
            ),
            severity_label=_("Severity at least"),
            severity_options=_options(
                [("0", _("any"))] + [(str(k), _(v)) for k, v in SEVERITIES.items()], str(severity)
            ),
            rule_label=_("Rule"),
            rule_options=_options(
                [("", _("any"))] + [(r.name, r.name) for r in RULES], q.get("rule", "")
            ),
            region_label=_("Region"),
            region=q.get("region", "") if req.scope.national else req.scope.region,
            region_disabled=Markup("" if req.scope.national else " readonly"),
            ght_label="GHT",
            ght=q.get("ght", ""),
            since_label=_("Since"),
            since=q.get("since", ""),
            until_label=_("Until"),
            until=q.get("until", ""),
            apply=_("Filter"),
        )
        live = (
            status_name in ("open", "any")
            and not before
            and not any(q.get(k) for k in ("rule", "region", "ght", "until", "severity"))
        )
        nxt = ""
        if more:
            params = dict(q) | {"before": str(rows[-1]["seq"])}
            nxt = tag(
                "a",
                _("Older incidents") + " →",
                href="/incidents?" + urllib.parse.urlencode(params),
                rel="next",
            )
        newest = (
            tag(
                "a",
                "← " + _("Newest"),
                href="/incidents?"
                + urllib.parse.urlencode({k: v for k, v in q.items() if k != "before"}),
            )
            if before
            else ""
        )
        table = (
            Markup('<table id="incidents" class="list"')
            + Markup(" data-live-table=1" if live else "")
            + Markup("><thead><tr>")
            + self.incident_head(req)
            + Markup("</tr></thead><tbody>")
            + join(self.incident_row(req, r) for r in rows)
            + Markup("</tbody></table>")
        )
        empty = tag("p", _("No incident matches."), class_="empty") if not rows else ""
        main = filters + table + empty + tag("nav", newest + Markup(" ") + nxt, class_="pager")
        return self.frame(req, "/incidents", _("Incidents"), main)

    def _incident_or_404(self, req: Request, key: str, limit: int = 500):
        if not KEY_RE.match(key):
            raise HttpError(404, req._("No such incident."))
        found = req.scope.incident(self.store, key, limit)
        s = req.session
        self.app.audit(
            s.name, s.role, "GetIncident", f'key: "{key}"', "ok" if found else "NOT_FOUND"
        )
        if found is None:
            # The same answer for "does not exist" and "another region's": nothing leaks.
            raise HttpError(404, req._("No such incident."))
        return found

    def incident(self, req: Request, key: str):
        _ = req._
        row, alerts = self._incident_or_404(req, key)
        scope = req.scope
        sites = scope.sites(row["sites"])
        site_rows = join(
            Markup("<tr>")
            + tag("td", s["ght"])
            + tag("td", s["finess"])
            + tag("td", s["region"])
            + Markup("</tr>")
            for s in sites
        )
        indicators: dict[tuple[str, str], int] = {}
        from collector.correlate.rules.base import INDICATOR_KINDS

        for _o, a, _t in alerts:
            for e in a.entities:
                if e.kind in INDICATOR_KINDS and not e.pseudonymised:
                    k = (INDICATOR_KINDS[e.kind], e.value)
                    indicators[k] = indicators.get(k, 0) + 1
        ind_rows = join(
            Markup("<tr>")
            + tag("td", kind)
            + tag(
                "td",
                tag("a", value, href="/alerts?" + urllib.parse.urlencode({"indicator": value})),
            )
            + tag("td", n, class_="num")
            + Markup("</tr>")
            for (kind, value), n in sorted(indicators.items(), key=lambda x: -x[1])[:200]
        )
        timeline = join(
            Markup("<li>")
            + self.when(req, a.first_seen.seconds + a.first_seen.nanos / 1e9)
            + Markup(" ")
            + self.severity(req, a.severity)
            + Markup(" ")
            + tag("strong", a.detector)
            + Markup(" ")
            + tag("span", f"{o.ght} · {o.finess}", class_="site")
            + tag("p", a.summary)
            + Markup("</li>")
            for o, a, _t in alerts
        )
        s = req.session
        form = render(
            "incident_actions.html",
            action=f"/incidents/{urllib.parse.quote(key)}/status",
            csrf=s.csrf,
            comment_label=_("Comment"),
            ack=_("Acknowledge"),
            close=_("Close"),
            legend=_("Change the status"),
        )
        main = render(
            "incident.html",
            key=row["key"],
            severity=self.severity(req, row["severity"]),
            status=self.status(req, row["status"]),
            status_label=_("Status"),
            status_by=row["status_by"] or "–",
            status_at=self.when(req, row["status_at"]),
            status_comment=row["status_comment"] or "–",
            by_label=_("By"),
            at_label=_("At"),
            comment_label=_("Comment"),
            rule_label=_("Rule"),
            rule=row["rule"],
            summary=row["summary"],
            first_label=_("First seen"),
            first=self.when(req, row["first_seen"]),
            last_label=_("Last seen"),
            last=self.when(req, row["last_seen"]),
            traffic=self._traffic(req, row),
            count_label=_("Alerts"),
            count=row["alert_count"],
            sites_title=_("Establishments involved"),
            sites=site_rows,
            region_label=_("Region"),
            indicators_title=_("Indicators"),
            indicators=ind_rows or tag("tr", tag("td", _("No external indicator."), colspan=3)),
            kind_label=_("Kind"),
            value_label=_("Value"),
            stix_href=f"/incidents/{urllib.parse.quote(key)}/stix",
            stix=_("Download STIX 2.1 bundle"),
            timeline_title=_("Timeline of alerts"),
            timeline=timeline or tag("li", _("No alert of your region.")),
            actions=form,
        )
        resp = self.frame(req, "/incidents", f"{row['rule']} · {row['subject']}", main)
        return resp

    def _traffic(self, req: Request, row: dict) -> Markup:
        """When the traffic behind the incident happened, for a rule that keeps it: a
        retro-hunt's can be weeks before the incident was first seen."""
        if row.get("traffic_first") is None:
            return Markup("")
        _ = req._
        return (
            tag("dt", _("First traffic"))
            + tag("dd", self.when(req, row["traffic_first"]), id="traffic-first")
            + tag("dt", _("Last traffic"))
            + tag("dd", self.when(req, row["traffic_last"]), id="traffic-last")
        )

    def incident_stix(self, req: Request, key: str):
        from collector.query.servicer import incident_message, stored_alert
        from collector.sinks.stix import bundle

        row, alerts = self._incident_or_404(req, key)
        region = req.scope.region
        pairs = [(incident_message(row, region), [stored_alert(o, a, t) for o, a, t in alerts])]
        kw = {k: self.app.stix[k] for k in ("identity_name", "tlp") if k in self.app.stix}
        s = req.session
        self.app.audit(s.name, s.role, "ExportStix", f'key: "{key}"', "ok")
        body = bundle(pairs, **kw).encode()
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:80]
        return Response(
            200,
            body,
            "application/stix+json;version=2.1",
            headers=[("Content-Disposition", f'attachment; filename="incident-{safe}.stix.json"')],
        )

    def incident_status(self, req: Request, key: str):
        _ = req._
        status = {"acknowledge": 2, "close": 3}.get(req.form.get("action", ""))
        comment = req.form.get("comment", "")
        s = req.session
        if status is None:
            raise HttpError(400, "action must be acknowledge or close")
        if len(comment) > 2000:
            raise HttpError(400, _("A comment is at most 2000 characters."))
        self._incident_or_404(req, key, 0)  # scope: refused as if it did not exist
        row = self.store.update_incident(key, status, s.name, comment)
        name = "STATUS_ACKNOWLEDGED" if status == 2 else "STATUS_CLOSED"
        detail = f'key: "{key}" status: {name} comment: {json.dumps(comment)[:500]}'
        self.app.audit(s.name, s.role, "UpdateIncident", detail, "ok" if row else "NOT_FOUND")
        return Response.redirect(f"/incidents/{urllib.parse.quote(key)}")

    # Alerts -----------------------------------------------------------------------------

    def alerts(self, req: Request, handler: Handler):
        _ = req._
        q = req.query
        region = self.region_asked(req, q.get("region", ""))
        indicator = q.get("indicator", "").strip().lower()[:200]
        flt = AlertFilter(
            since=self.parse_when(req, q.get("since", ""), "since"),
            until=self.parse_when(req, q.get("until", ""), "until"),
            detector=q.get("detector", "")[:64],
            min_severity=_int(q.get("severity", ""), 0, 5),
            finess=q.get("finess", "")[:16],
            ght=q.get("ght", "")[:64],
            region=region,
            indicator=(indicator_kinds(indicator), indicator) if indicator else None,
        )
        before = _int(q.get("before", ""), 0, 2**63 - 1) or None
        page, cursor = self.store.list_alerts(flt, PAGE, before)
        s = req.session
        shown = " ".join(f"{k}: {json.dumps(v)}" for k, v in sorted(q.items()) if v)[:500]
        self.app.audit(s.name, s.role, "ListAlerts", shown, "ok")
        rows = join(
            Markup("<tr>")
            + tag("td", self.when(req, a.last_seen.seconds))
            + tag("td", self.severity(req, a.severity))
            + tag("td", a.detector)
            + tag("td", o.ght)
            + tag("td", o.finess)
            + tag("td", a.summary)
            + tag("td", a.occurrences, class_="num")
            + Markup("</tr>")
            for o, a, _t in page
        )
        form = render(
            "alert_filters.html",
            detector_label=_("Detector"),
            detector=q.get("detector", ""),
            severity_label=_("Severity at least"),
            severity_options=_options(
                [("0", _("any"))] + [(str(k), _(v)) for k, v in SEVERITIES.items()],
                q.get("severity", "0"),
            ),
            ght=q.get("ght", ""),
            finess=q.get("finess", ""),
            region_label=_("Region"),
            region=q.get("region", "") if req.scope.national else req.scope.region,
            region_disabled=Markup("" if req.scope.national else " readonly"),
            indicator_label=_("Indicator (IP, domain, JA3, JA4)"),
            indicator=q.get("indicator", ""),
            since_label=_("Since"),
            since=q.get("since", ""),
            until_label=_("Until"),
            until=q.get("until", ""),
            apply=_("Search"),
        )
        head = join(
            tag("th", _(h), scope="col")
            for h in ("Last seen", "Severity", "Detector", "GHT", "FINESS", "Summary", "Count")
        )
        nxt = ""
        if cursor:
            nxt = tag(
                "a",
                _("Older alerts") + " →",
                href="/alerts?" + urllib.parse.urlencode(dict(q) | {"before": str(cursor)}),
                rel="next",
            )
        newest = ""
        if before:
            rest = {k: v for k, v in q.items() if k != "before"}
            newest = tag("a", "← " + _("Newest"), href="/alerts?" + urllib.parse.urlencode(rest))
        main = (
            form
            + Markup('<table id="alerts" class="list"><thead><tr>')
            + head
            + Markup("</tr></thead><tbody>")
            + rows
            + Markup("</tbody></table>")
            + (tag("p", _("No alert matches."), class_="empty") if not page else "")
            + tag("nav", newest + Markup(" ") + nxt, class_="pager")
        )
        return self.frame(req, "/alerts", _("Alerts"), main)

    # Fleet ------------------------------------------------------------------------------

    def fleet(self, req: Request, handler: Handler):
        """Every GHT in one line (agents, silent, versions, soonest certificate expiry,
        outbox backlog, worst host), the silent agents, and one GHT's agents in full
        (?ght=): a national fleet of a thousand agents stays one short page."""
        _ = req._
        scope = req.scope
        now = time.time()
        agents = scope.agents(self.store)
        held = self.store.dead_letter_counts()
        certs: dict[str, dict] = {}
        names: dict[str, str] = {}
        if self.app.registry is not None:
            certs = {a["agent_id"]: a for a in self.app.registry.agents()}
            names = self.app.registry.names()
        after = self.app.silent_after

        def silent(a: dict) -> bool:
            return now - a["last_seen"] > after

        def host(a: dict) -> dict:
            try:
                return json.loads(a["host"] or "{}")
            except ValueError:
                return {}

        by_ght: dict[str, list[dict]] = {}
        for a in agents:
            by_ght.setdefault(a["ght"], []).append(a)
        summary_rows = []
        for ght in sorted(by_ght):
            group = by_ght[ght]
            expiries = [certs[a["agent_id"]]["not_after"] for a in group if a["agent_id"] in certs]
            soonest = min(expiries) if expiries else None
            n_silent = sum(1 for a in group if silent(a))
            worst = max(
                (max(host(a).get(k, 0) for k in ("cpu_percent", "memory_percent", "disk_percent"))
                 for a in group),
                default=0,
            )  # fmt: skip
            summary_rows.append(
                Markup("<tr>")
                + tag("td", tag("a", ght, href="/fleet?" + urllib.parse.urlencode({"ght": ght})))
                + tag("td", len(group), class_="num")
                + tag("td", n_silent, class_="num state-silent" if n_silent else "num")
                + tag("td", ", ".join(sorted({a["agent_version"] or "?" for a in group})[:3]))
                + tag(
                    "td",
                    self.when(req, soonest) if soonest else "–",
                    class_="warn" if soonest and soonest - now < 14 * 86400 else None,
                )
                + tag("td", sum(a["outbox_depth"] for a in group), class_="num")
                + tag("td", f"{worst:.0f} %", class_="num")
                + Markup("</tr>")
            )
        summary_head = join(
            tag("th", _(h), scope="col")
            for h in (
                "GHT",
                "Agents",
                "Silent",
                "Versions",
                "Soonest certificate expiry",
                "Outbox",
                "Busiest host resource",
            )
        )
        head = join(
            tag("th", _(h), scope="col")
            for h in (
                "Agent",
                "GHT",
                "FINESS",
                "State",
                "Last heartbeat",
                "Version",
                "Certificate expires",
                "Outbox",
                "Dropped packets",
                "Dead letters",
                "Host CPU / memory / disk",
            )
        )

        def agent_rows(rows: list[dict]) -> Markup:
            out = []
            for a in rows:
                h = host(a)
                cert = certs.get(a["agent_id"], {})
                expires = cert.get("not_after")
                soon = expires is not None and expires - now < 14 * 86400
                label = names.get(a["agent_id"]) or h.get("label") or a["agent_id"][:12]
                off = silent(a)
                out.append(
                    Markup(f'<tr class="{"silent" if off else ""}">')
                    + tag("td", tag("span", label, title=a["agent_id"]))
                    + tag("td", a["ght"])
                    + tag("td", a["finess"])
                    + tag(
                        "td",
                        tag(
                            "span",
                            _("silent") if off else _("reporting"),
                            class_="state-silent" if off else "state-ok",
                        ),
                    )
                    + tag("td", self.when(req, a["last_seen"]))
                    + tag("td", a["agent_version"] or "–")
                    + tag(
                        "td",
                        self.when(req, expires) if expires else "–",
                        class_="warn" if soon else None,
                    )
                    + tag(
                        "td", f"{a['outbox_depth']} (+{a['outbox_shed']} {_('shed')})", class_="num"
                    )
                    + tag("td", a["packets_dropped"], class_="num")
                    + tag("td", held.get(a["agent_id"], 0), class_="num")
                    + tag(
                        "td",
                        " / ".join(
                            f"{h.get(k, 0):.0f} %"
                            for k in ("cpu_percent", "memory_percent", "disk_percent")
                        ),
                        class_="num",
                    )
                    + Markup("</tr>")
                )
            return join(out)

        def table(rows: list[dict], id_: str) -> Markup:
            return (
                Markup(f'<table class="list" id="{id_}"><thead><tr>')
                + head
                + Markup("</tr></thead><tbody>")
                + agent_rows(rows)
                + Markup("</tbody></table>")
            )

        silent_agents = sorted((a for a in agents if silent(a)), key=lambda a: a["last_seen"])
        intro = tag(
            "p",
            f"{len(agents)} {_('agents')}, {len(silent_agents)} {_('silent')} "
            f"({_('no heartbeat for')} {int(after)} s)",
            class_="summary",
        )
        main = intro
        ght = req.query.get("ght", "")
        if ght:
            main += tag("h2", ght) + table(
                sorted(by_ght.get(ght, []), key=lambda a: a["finess"]), "ght-agents"
            )
        main += tag("h2", _("Silent agents")) + (
            table(silent_agents[:200], "silent-agents")
            if silent_agents
            else tag("p", _("Every agent is reporting."), class_="ok")
        )
        main += (
            tag("h2", _("Agents per GHT"))
            + Markup('<table class="list" id="ghts"><thead><tr>')
            + summary_head
            + Markup("</tr></thead><tbody>")
            + join(summary_rows)
            + Markup("</tbody></table>")
        )
        if not agents:
            main += tag("p", _("No agent has reported yet."), class_="empty")
        return self.frame(req, "/fleet", _("Fleet"), main)

    # Intel ------------------------------------------------------------------------------

    def intel(self, req: Request, handler: Handler, message: object = "", status: int = 200):
        _ = req._
        version, bundle = (0, {})
        if self.app.registry is not None:
            version, bundle = self.app.registry.current_intel()
        counts = join(
            Markup("<tr>")
            + tag("th", k, scope="row")
            + tag("td", len(bundle.get(k, [])), class_="num")
            + Markup("</tr>")
            for k in ("ips", "domains", "ja3", "ja4", "hashes", "thresholds")
        )
        with self.store.backend.tx() as tx:
            published = tx.fetch(
                "SELECT at, who, detail, outcome FROM audit WHERE action = 'PublishIntel' "
                "ORDER BY n DESC LIMIT 20"
            )
        history = join(
            Markup("<tr>")
            + tag("td", self.when(req, r["at"]))
            + tag("td", r["who"])
            + tag("td", r["outcome"])
            + tag("td", "console" if "via=console" in r["detail"] else "vigie")
            + Markup("</tr>")
            for r in published
        )
        form: object = tag("p", _("Only a national analyst publishes intel."), class_="note")
        if req.scope.national:
            form = render(
                "intel_form.html",
                csrf=req.session.csrf,
                legend=_("Publish indicators"),
                bundle_label=_("Bundle (JSON: ips, domains, ja3, ja4, hashes, thresholds)"),
                replace_label=_("Replace the whole bundle (otherwise: add to it)"),
                submit=_("Publish"),
            )
        main = render(
            "intel.html",
            message=message,
            version_label=_("Current version"),
            version=version,
            counts=counts,
            history_title=_("Published"),
            when=_("When"),
            who=_("By"),
            outcome=_("Outcome"),
            via=_("Through"),
            history=history,
            form=form,
        )
        return self.frame(req, "/intel", _("Intel"), main, status)

    def intel_publish(self, req: Request, handler: Handler):
        _ = req._
        s = req.session
        if self.app.registry is None:
            raise HttpError(503, "intel is not served by this collector")
        replace = req.form.get("replace") == "1"
        try:
            version, new = publish_intel(
                self.app.registry, req.scope, req.form.get("bundle", ""), replace
            )
        except NotAllowed as exc:
            self.app.audit(
                s.name, s.role, "PublishIntel", f"replace: {replace}", "PERMISSION_DENIED"
            )
            raise HttpError(403, str(exc)) from None
        except (ValueError, RecursionError) as exc:
            self.app.audit(
                s.name, s.role, "PublishIntel", f"replace: {replace}", "INVALID_ARGUMENT"
            )
            msg = tag("p", f"{_('Not published')}: {str(exc)[:500]}", class_="error", role="alert")
            return self.intel(req, None, msg, 400)
        counts = ", ".join(f"{len(v)} {k}" for k, v in new.items())
        self.app.audit(
            s.name, s.role, "PublishIntel", f"replace: {replace} version: {version}", "ok"
        )
        msg = tag("p", f"{_('Published version')} {version}: {counts}", class_="ok", role="status")
        return self.intel(req, None, msg)

    # Audit ------------------------------------------------------------------------------

    def audit_log(self, req: Request, handler: Handler):
        """A national analyst reads the whole trail; a regional one their own entries."""
        _ = req._
        s = req.session
        sql, args = "SELECT * FROM audit", []
        if not req.scope.national:
            sql += " WHERE who = ?"
            args.append(s.name)
        before = _int(req.query.get("before", ""), 0, 2**63 - 1)
        if before:
            sql += (" AND" if args else " WHERE") + " n < ?"
            args.append(before)
        sql += " ORDER BY n DESC LIMIT ?"
        args.append(PAGE * 2 + 1)
        with self.store.backend.tx() as tx:
            rows = tx.fetch(sql, args)
        more = len(rows) > PAGE * 2
        rows = rows[: PAGE * 2]
        body = join(
            Markup("<tr>")
            + tag("td", self.when(req, r["at"]))
            + tag("td", r["who"])
            + tag("td", r["role"])
            + tag("td", r["action"])
            + tag("td", r["detail"], class_="detail")
            + tag("td", r["outcome"])
            + Markup("</tr>")
            for r in rows
        )
        head = join(
            tag("th", _(h), scope="col")
            for h in ("When", "Who", "Role", "Action", "Detail", "Outcome")
        )
        nxt = (
            tag("a", _("Older entries") + " →", href=f"/audit?before={rows[-1]['n']}", rel="next")
            if more
            else ""
        )
        main = (
            Markup('<table id="audit" class="list"><thead><tr>')
            + head
            + Markup("</tr></thead><tbody>")
            + body
            + Markup("</tbody></table>")
            + tag("nav", nxt, class_="pager")
        )
        return self.frame(req, "/audit", _("Audit log"), main)

    # Live -------------------------------------------------------------------------------

    def events(self, req: Request, handler: Handler):
        """Server-sent events: every incident change the analyst may see, read from the
        change feed WatchIncidents reads, through the same scope."""
        scope = req.scope
        last = req.headers.get("Last-Event-ID") or req.query.get("cursor", "")
        cursor = _int(last, 0, 2**63 - 1) if last else self.store.last_change_seq()
        w = handler.wfile
        handler.send_response(200)
        from collector.console.server import SECURITY_HEADERS

        for k, v in SECURITY_HEADERS.items():
            handler.send_header(k, v)
        handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Connection", "close")
        handler.end_headers()
        w.write(b"retry: 1000\n\n")
        w.flush()
        poll = self.app.cfg["live_poll_seconds"]
        quiet = checked = time.monotonic()
        try:
            while not self.app.stopping.is_set():
                rows, cursor = scope.changes(self.store, cursor)
                for r in rows:
                    data = json.dumps(
                        {
                            "key": r["key"],
                            "change": r.get("change", ""),
                            "status": STATUSES.get(r["status"], ""),
                            "row": str(self.incident_row(req, r)),
                        }
                    )
                    w.write(f"id: {r['seq']}\nevent: incident\ndata: {data}\n\n".encode())
                if rows:
                    w.flush()
                    quiet = time.monotonic()
                    continue
                now = time.monotonic()
                if now - checked > 5:
                    checked = now
                    if self.app.accounts.session(req.sid) is None:
                        w.write(b"event: signedout\ndata: {}\n\n")
                        w.flush()
                        return None
                if now - quiet > 15:
                    w.write(b": keep-alive\n\n")
                    w.flush()
                    quiet = now
                time.sleep(poll)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass
        return None


def _int(text: str, low: int, high: int) -> int:
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not low <= int(text) <= high:
        raise HttpError(400, f"not a number between {low} and {high}: {rules.shown(text)}")
    return int(text)


def _options(choices: list[tuple[str, str]], selected: str) -> Markup:
    return join(
        tag("option", label, value=value, selected=value == selected) for value, label in choices
    )


def _safe_next(where: str) -> str:
    """Only a path of ours: never another site (an open redirect), nor //host."""
    if not where.startswith("/") or where.startswith("//") or "\\" in where:
        return "/"
    return where
