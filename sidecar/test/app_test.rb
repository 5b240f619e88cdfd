# frozen_string_literal: true

require_relative "helper"

# HTTP surface: routing, 400s, /health, /metrics, capacity.
class AppTest < Minitest::Test
  include SidecarTestHelpers

  def test_bodies_that_are_not_jobs_are_400
    {
      "{not json" => /invalid JSON/,
      "" => /empty body/,
      "[1,2]" => /must be a JSON object/,
      JSON.generate({"args" => []}) => /class/,
      JSON.generate({"class" => "ContextJob"}) => /args/,
      JSON.generate({"class" => "ContextJob", "args" => "nope"}) => /args/,
      JSON.generate({"class" => 12, "args" => []}) => /class/
    }.each do |raw, reason|
      status, body = perform(raw)
      assert_equal 400, status, raw
      assert_match reason, body["error"], raw
    end
    assert_equal 7, @app.metrics.count("perform", "bad_request")
  end

  def test_health_once_booted
    status, body = get("/health")
    assert_equal 200, status
    assert_equal "ok", body["status"]
    assert_equal Sidekiq::VERSION, body["sidekiq"]
    assert_equal Rails.version, body["rails"]
    assert_equal 1, body["protocol"]
    assert_equal 0, body["in_flight"]
  end

  def test_health_and_perform_while_booting_or_draining
    drain = Fastworker::Sidecar::Drain.new(capacity: 2)
    @app = Fastworker::Sidecar::App.new(drain: drain)
    assert_equal([503, "booting"], get("/health").then { |s, b| [s, b["status"]] })
    status, body = perform(job("ContextJob"))
    assert_equal [503, "booting"], [status, body["error"]]
    drain.ready!
    drain.begin_drain!
    assert_equal([503, "draining"], get("/health").then { |s, b| [s, b["status"]] })
    status, body = perform(job("ContextJob"))
    assert_equal [503, "draining"], [status, body["error"]]
    assert_empty Recorder[:context]
  end

  def test_503_at_capacity_never_queues
    drain = Fastworker::Sidecar::Drain.new(capacity: 2)
    drain.ready!
    @app = Fastworker::Sidecar::App.new(drain: drain)
    slow = Array.new(2) { Thread.new { perform(job("SlowJob", [0.5])) } }
    sleep 0.05 until drain.in_flight == 2
    status, body = perform(job("ContextJob"))
    assert_equal 503, status
    assert_equal "at_capacity", body["error"]
    _, health = get("/health")
    assert_equal 2, health["in_flight"]
    assert_equal([200, 200], slow.map { |t| t.value.first })
    assert_equal 200, perform(job("ContextJob")).first, "admits again once a slot is free"
    assert_equal 1, @app.metrics.count("perform", "unavailable")
  end

  def test_unavailable_carries_retry_after_only_when_booting_or_draining
    drain = Fastworker::Sidecar::Drain.new(capacity: 1)
    app = Fastworker::Sidecar::App.new(drain: drain)
    raw = JSON.generate(job("ContextJob"))
    response = Rack::MockRequest.new(app).post("/perform", {input: raw}.merge(signature("POST", "/perform", raw)))
    assert_equal "1", response.headers["retry-after"]
  end

  def test_metrics_in_prometheus_text
    perform(job("ContextJob"))
    perform(job("FailingJob", ["x"]))
    status, text = get("/metrics")
    assert_equal 200, status
    assert_includes text, %(fastworker_sidecar_requests_total{endpoint="perform",outcome="done"} 1)
    assert_includes text, %(fastworker_sidecar_requests_total{endpoint="perform",outcome="failed"} 1)
    assert_includes text, "fastworker_sidecar_in_flight 0"
    assert_includes text, "fastworker_sidecar_capacity 4"
    assert_includes text, %(fastworker_sidecar_request_duration_seconds_bucket{endpoint="perform",le="+Inf"} 2)
    assert_includes text, %(fastworker_sidecar_request_duration_seconds_count{endpoint="perform"} 2)
    assert_includes text, "# TYPE fastworker_sidecar_request_duration_seconds histogram"
  end

  def test_every_protocol_answer_names_the_answering_process
    pid = Process.pid.to_s
    mock = Rack::MockRequest.new(@app)
    ok = JSON.generate(job("ContextJob"))
    exhausted = JSON.generate({"job" => job("ContextJob"), "error" => {"class" => "RuntimeError", "message" => "x"}})
    [["/perform", ok, 200], ["/perform", JSON.generate(job("FailingJob", ["x"])), 422], ["/perform", "{bad", 400],
     ["/perform_batch", [ok, ok].join("\n"), 200], ["/perform_batch", "", 400], ["/exhausted", exhausted, 200]].each do |path, body, status|
      response = mock.post(path, {input: body}.merge(signature("POST", path, body)))
      assert_equal status, response.status, "#{path} #{body[0, 40]}"
      assert_equal pid, response.headers["x-fastworker-pid"], "#{path} answering #{status}"
    end
    assert_equal pid, mock.get("/perform", signature("GET", "/perform", "")).headers["x-fastworker-pid"], "a 405 on a protocol path too"
    assert_equal pid, mock.get("/health", signature("GET", "/health", "")).headers["x-fastworker-pid"], "/health: the worker identifies its connections with it"
    @drain.begin_drain!
    assert_equal pid, mock.post("/perform_batch", {input: ok}.merge(signature("POST", "/perform_batch", ok))).headers["x-fastworker-pid"], "503 draining"
    assert_nil mock.get("/health").headers["x-fastworker-pid"], "an unsigned /health says nothing about the process"
  end

  def test_config_answers_sidekiqs_settings_once_booted
    status, body = get("/config")
    assert_equal 200, status
    assert_equal Sidekiq::VERSION, body["sidekiq_version"]
    assert_kind_of Integer, body["concurrency"]
    assert_kind_of Array, body["queues"]
    assert_equal 401, get("/config", sign: false).first, "it holds the Redis URL: signed callers only"
    @app = Fastworker::Sidecar::App.new(drain: Fastworker::Sidecar::Drain.new(capacity: 1))
    assert_equal 503, get("/config").first
  end

  def test_health_reports_workers_capacity_and_batch_max
    _, body = get("/health")
    assert_equal [1, 4, Fastworker::Sidecar::App::BATCH_LIMIT], body.values_at("workers", "capacity", "batch_max")
    @app = Fastworker::Sidecar::App.new(drain: @drain, workers: 3)
    assert_equal 3, get("/health").last["workers"]
  end

  def test_routing
    assert_equal 404, get("/nope").first
    assert_equal 405, get("/perform").first
    assert_equal 405, post("/health", {}).first
  end
end
