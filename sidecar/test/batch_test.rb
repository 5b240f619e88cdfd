# frozen_string_literal: true

require_relative "helper"

# POST /perform_batch: several jobs per request, each with its own outcome, in order.
class BatchTest < Minitest::Test
  include SidecarTestHelpers

  def batch(payloads, keys = nil)
    raws = payloads.map { |p| p.is_a?(String) ? p : JSON.generate(p) }
    env = {method: "POST", input: raws.join("\n"), "CONTENT_TYPE" => "application/x-ndjson"}
    env["HTTP_IDEMPOTENCY_KEYS"] = keys.join(",") if keys
    env.merge!(signature("POST", "/perform_batch", env[:input], env["HTTP_IDEMPOTENCY_KEYS"] || ""))
    response = Rack::MockRequest.new(@app).request("POST", "/perform_batch", env)
    [response.status, parse(response.body)]
  end

  def test_each_job_keeps_its_own_outcome_in_order
    ok = job("ContextJob", [1])
    failing = job("FailingJob", ["boom"], "backtrace" => 1)
    unknown = job("NoSuchJob")
    status, items = batch([ok, failing, "{not json", unknown], [ok["jid"], failing["jid"], "x", unknown["jid"]])
    assert_equal 200, status
    assert_equal(%w[done failed bad_request failed], items.map { |i| i["status"] })
    assert_equal ok["jid"], items[0]["jid"]
    assert_kind_of Numeric, items[0]["runtime_ms"]
    assert_equal ["RuntimeError", "boom", nil, true], items[1].values_at("error_class", "error_message", "retry_in", "retry")
    assert_equal 1, items[1]["backtrace"].size
    assert_match(/invalid JSON/, items[2]["error"])
    assert_equal ["NameError", "global"], items[3].values_at("error_class", "stage")
    assert_equal ok["jid"], Recorder[:context].first["idempotency_key"]
    assert_equal 1, @app.metrics.count("perform_batch", "done")
    assert_equal 2, @app.metrics.count("perform_batch", "failed")
    assert_equal 0, @drain.in_flight
  end

  def test_each_job_is_its_own_unit_of_work
    batch([job("ContextJob", ["a"]), job("ContextJob", ["b"])])
    first, second = Recorder[:context]
    assert first["executor_active"]
    assert_nil second["current_before"], "CurrentAttributes reset between jobs of one batch"
    refute_equal first["sidekiq_context"][:jid], second["sidekiq_context"][:jid]
  end

  def test_health_advertises_batches
    _, body = get("/health")
    assert_equal true, body["batch"]
    assert_equal Fastworker::Sidecar::App::BATCH_LIMIT, body["batch_max"]
  end

  def test_not_ready_limits_and_draining_mid_batch
    assert_equal 400, batch([]).first
    assert_equal 400, batch(Array.new(Fastworker::Sidecar::App::BATCH_LIMIT + 1) { job("ContextJob") }).first
    @drain.begin_drain!
    status, body = batch([job("ContextJob")])
    assert_equal [503, "draining"], [status, body["error"]]
  end

  def test_jobs_after_a_drain_began_are_not_attempted
    drainer = Class.new do
      def initialize(drain)
        super()
        @drain = drain
      end

      def call(*) = @drain.begin_drain!
    end
    Sidekiq.server_middleware { |chain| chain.add(drainer, @drain) }
    _, items = batch([job("ContextJob"), job("ContextJob")])
    assert_equal(%w[done unavailable], items.map { |i| i["status"] })
    assert_equal "draining", items[1]["reason"]
  ensure
    Sidekiq.server_middleware { |chain| chain.remove(drainer) }
  end

  def test_done_items_are_the_bytes_json_generate_writes
    ["0123456789abcdef01234567", "with \"quote\" and \\ / \u00e9\u2028\n", "", nil, 12].each do |jid|
      body = {"jid" => jid, "status" => "done", "runtime_ms" => 0.012}
      result = Fastworker::Sidecar::Result.done(jid, 0.012)
      assert_equal JSON.generate(body), result.to_rack[2].join, jid.inspect
      assert_equal JSON.generate(body), result.write_batch_item(+""), jid.inspect
      assert_equal body, result.body
    end
    skipped = Fastworker::Sidecar::Result.done("j", 1.5, "skipped" => true)
    assert_equal '{"jid":"j","status":"done","runtime_ms":1.5,"skipped":true}', skipped.to_rack[2].join
  end

  def test_metrics_count_and_time_each_job_of_a_batch
    batch([job("ContextJob"), job("ContextJob"), job("FailingJob", ["x"]), "{bad"])
    batch([job("ContextJob")])
    _, text = get("/metrics")
    assert_includes text, %(fastworker_sidecar_requests_total{endpoint="perform_batch",outcome="bad_request"} 1\n)
    assert_includes text, %(fastworker_sidecar_requests_total{endpoint="perform_batch",outcome="done"} 3\n)
    assert_includes text, %(fastworker_sidecar_requests_total{endpoint="perform_batch",outcome="failed"} 1\n)
    assert_includes text, %(fastworker_sidecar_request_duration_seconds_bucket{endpoint="perform_batch",le="60"} 5\n)
    assert_includes text, %(fastworker_sidecar_request_duration_seconds_count{endpoint="perform_batch"} 5\n)
    refute_includes text, %(endpoint="perform",), "a batch counts under perform_batch only"
  end

  def test_hard_stop_interrupts_only_the_running_job_of_a_batch
    slow = job("SlowJob", [5])
    runner = Thread.new { batch([slow, job("ContextJob", ["after"])]) }
    sleep 0.01 until @drain.in_flight == 1
    assert_equal 1, @drain.interrupt_running(Sidekiq::Shutdown)
    status, items = runner.value
    assert_equal 200, status
    assert_equal [%w[shutdown done], slow["jid"]], [items.map { |i| i["status"] }, items[0]["jid"]]
    assert_equal [["after"]], Recorder[:context].map { |c| c["args"] }, "the next job ran untouched"
    assert_equal 0, @drain.in_flight
  end

  def test_a_hard_stop_after_a_drain_leaves_the_rest_unattempted
    runner = Thread.new { batch([job("SlowJob", [5]), job("ContextJob")]) }
    sleep 0.01 until @drain.in_flight == 1
    @drain.begin_drain!
    @drain.interrupt_running(Sidekiq::Shutdown)
    status, items = runner.value
    assert_equal [200, %w[shutdown unavailable]], [status, items.map { |i| i["status"] }]
    assert_empty Recorder[:context]
  end

  def test_reloader_and_middleware_are_read_after_the_app_built_them
    app = Fastworker::Sidecar::App.new(drain: @drain) # built before the configure_server below, as at boot
    calls = []
    previous = Sidekiq.options[:reloader]
    Sidekiq.options[:reloader] = proc { |&block| calls << :reloader; previous.call(&block) }
    @app = app
    status, = post("/perform_batch", [job("ContextJob"), job("ContextJob")].map { |j| JSON.generate(j) }.join("\n"))
    assert_equal 200, status
    assert_equal %i[reloader reloader], calls, "one reloader wrap per job, the one configured last"
  ensure
    Sidekiq.options[:reloader] = previous
  end
end
