"""The demo app's read endpoints bench/load.py relies on: GET /runs?after_id pages through every
JobRun row in id order, GET /stats gives Sidekiq's queue-wide figures (run in the app through
Rack::MockRequest, inside a transaction that is rolled back)."""

from __future__ import annotations

import pytest

from tests.conftest import REDIS_BASE, TEST_DB
from tests.helpers import rails

pytestmark = [pytest.mark.ruby, pytest.mark.rails]
URL = f"{REDIS_BASE}/{TEST_DB}"

SNIPPET = r"""
out = nil
ActiveRecord::Base.transaction do
  ids = 3.times.map { |i| JobRun.create!(jid: "page-#{i}", job_class: "X", kind: "plain", status: "performed").id }
  app = Rack::MockRequest.new(Rails.application)
  page = JSON.parse(app.get("/runs?after_id=#{ids[0]}&limit=1").body).map { |r| r["jid"] }
  rest = JSON.parse(app.get("/runs?after_id=#{ids[1]}&limit=1000").body).map { |r| r["jid"] }
  last = JSON.parse(app.get("/runs?limit=1").body).map { |r| r["jid"] }
  stats = JSON.parse(app.get("/stats").body)
  out = {page: page, rest: rest, last: last, stats: stats.keys.sort}
  raise ActiveRecord::Rollback
end
puts out.to_json
"""


@pytest.mark.skipif(not rails.ruby_available(), reason="needs Debian's ruby-rails and ruby-sidekiq")
def test_runs_pages_after_an_id_and_stats_reads_sidekiq(redis_url):
    rails.prepare_db(URL)
    got = rails.rails_json(SNIPPET, URL)
    assert got["page"] == ["page-1"]          # the first row after the id, limit 1
    assert got["rest"] == ["page-2"]
    assert got["last"] == ["page-2"]          # without after_id: still the last rows
    assert got["stats"] == sorted(["processed", "failed", "enqueued", "queues", "scheduled_size",
                                   "retry_size", "dead_size"])
