"""The real Sidekiq::Web (Debian's ruby-sidekiq 6.4.1), driven through Rack::MockRequest: its Dashboard
and Busy pages show a fastworker process and its running job, and its Quiet / Stop buttons (POST /busy,
CSRF token and all) make the worker obey."""

from __future__ import annotations

import html
import json
import re

from tests.helpers.procs import ruby_json, wait_until

# One Rack session (a plain Hash in env["rack.session"], as a cookie session middleware would provide)
# carries the CSRF secret from the GET that renders the form to the POST that submits it.
WEB = """
require "sidekiq/web"
require "rack/mock"
APP = Sidekiq::Web.new
SESSION = {}
def call(method, path, params = nil)
  opts = {"rack.session" => SESSION}
  opts[:params] = params if params
  res = Rack::MockRequest.new(APP).request(method, path, opts)
  {"status" => res.status, "body" => res.body, "location" => res.headers["Location"]}
end
def token(body)
  body[/name='authenticity_token' value='([^']+)'/, 1]
end
"""


def web(redis_url: str, code: str):
    return ruby_json(redis_url, WEB + code)


def push(redis_url: str, klass: str, args: list) -> str:
    return ruby_json(redis_url, f"""
      puts [Sidekiq::Client.push("class" => "{klass}", "args" => {json.dumps(args)})].to_json""")[0]


def text(body: str) -> str:
    """The page as whitespace-collapsed text, tags dropped."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def test_dashboard_and_busy_pages_show_our_process_and_its_running_job(redis_url, r, stub, worker):
    w = worker("-c", "4", "--heartbeat-interval", "1", "--tag", "payments", "--label", "canary")
    ident = w.wait_event("startup")[0]["identity"]
    jid = push(redis_url, "SlowJob", [6])
    wait_until(lambda: int(r.hget(ident, "busy") or 0) == 1, 10, 0.1, "the job in the process record")
    pages = web(redis_url, """
      puts({dash: call("GET", "/"), busy: call("GET", "/busy"), stats: call("GET", "/stats")}.to_json)""")
    dash, busy, stats = pages["dash"], pages["busy"], pages["stats"]
    assert dash["status"] == 200 and busy["status"] == 200 and stats["status"] == 200
    # Dashboard: the summary's Busy counter sums our process record's "busy"
    assert re.search(r'id="txtBusy" class="count">1<', dash["body"]), text(dash["body"])[:2000]
    assert json.loads(stats["body"])["sidekiq"]["busy"] == 1
    assert json.loads(stats["body"])["sidekiq"]["processes"] == 1
    # Busy: the process row (host:pid, tag, label, queues, threads, busy) and the job row
    page = text(busy["body"])
    host, pid, _ = ident.split(":")
    assert f"{host}:{pid}" in page
    assert "payments" in page and "canary" in page
    assert "Queues: default" in page
    assert f"value=\"{ident}\"" in busy["body"]  # the per-process Quiet/Stop form names our identity
    assert " quiet " not in page  # not quiet yet
    m = re.search(r"<h3>(\d+)</h3>\s*<p>Threads</p>", busy["body"])
    assert m and m.group(1) == "4"
    jobs = busy["body"][busy["body"].index('class="workers'):]
    assert ident in jobs and jid in jobs and "SlowJob" in jobs and ">default<" in jobs


def test_quiet_and_stop_buttons_reach_the_worker(redis_url, r, stub, worker):
    w = worker("-c", "2", "--heartbeat-interval", "1")
    ident = w.wait_event("startup")[0]["identity"]
    # a POST without the CSRF token is refused: the check below really goes through Sidekiq's protection
    denied = web(redis_url, f"""
      puts call("POST", "/busy", {{"identity" => "{ident}", "quiet" => "1"}}).slice("status").to_json""")
    assert denied["status"] == 403
    assert r.llen(f"{ident}-signals") == 0

    quiet = web(redis_url, f"""
      page = call("GET", "/busy")
      res = call("POST", "/busy", {{"identity" => "{ident}", "quiet" => "1", "authenticity_token" => token(page["body"])}})
      puts res.slice("status", "location").to_json""")
    assert quiet["status"] == 302 and quiet["location"].endswith("/busy")
    assert w.wait_event("quiet", 5)[0]["source"] == "TSTP"
    wait_until(lambda: r.hget(ident, "quiet") == b"true", 5, 0.1, "quiet in the record")
    page = web(redis_url, 'puts call("GET", "/busy").to_json')
    assert 'label-danger">quiet<' in page["body"]
    assert w.proc.poll() is None

    stop = web(redis_url, """
      page = call("GET", "/busy")
      res = call("POST", "/busy", {"stop" => "1", "authenticity_token" => token(page["body"])})
      puts res.slice("status").to_json""")  # "Stop All"
    assert stop["status"] == 302
    assert w.wait(15) == 0
    assert w.events("shutdown_begin")[0]["source"] == "TERM"
    after = web(redis_url, 'puts call("GET", "/busy").to_json')
    assert ident not in after["body"]
