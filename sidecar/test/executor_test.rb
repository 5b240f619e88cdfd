# frozen_string_literal: true

require_relative "helper"

# Execution context: what a job sees inside the sidecar (compat §6.1 / §6.4).
class ExecutorTest < Minitest::Test
  include SidecarTestHelpers

  def test_plain_worker_runs_with_jid_args_and_middleware_context
    payload = job("ContextJob", [1, "two", {"three" => 3}])
    status, body = perform(payload, "Idempotency-Key" => payload["jid"])
    assert_equal 200, status, body.inspect
    assert_equal({"jid" => payload["jid"], "status" => "done"}, body.slice("jid", "status"))
    assert_kind_of Numeric, body["runtime_ms"]

    seen = Recorder[:context].first
    assert_equal [1, "two", {"three" => 3}], seen["args"]
    assert_equal payload["jid"], seen["jid"]
    assert_equal payload["jid"], seen["middleware"]["jid"]
    assert_equal payload["jid"], seen["middleware"]["worker_jid"], "jid= is set before the middleware runs"
    assert_equal "default", seen["middleware"]["queue"]
    assert_equal payload["jid"], seen["idempotency_key"]
    assert_nil Fastworker::Sidecar.current_idempotency_key, "cleared after the job"
  end

  def test_idempotency_key_header_is_exposed_as_sent
    perform(job("ContextJob"), "Idempotency-Key" => "key-from-the-worker")
    assert_equal "key-from-the-worker", Recorder[:context].first["idempotency_key"]
  end

  def test_hard_stop_interrupt_answers_shutdown_and_frees_the_slot
    payload = job("SlowJob", [5])
    runner = Thread.new { perform(payload) }
    sleep 0.01 until @drain.in_flight == 1
    assert_equal 1, @drain.interrupt_running(Sidekiq::Shutdown)
    status, body = runner.value
    assert_equal [503, "shutdown", payload["jid"]], [status, body["status"], body["jid"]]
    assert_equal 0, @drain.in_flight
    assert_empty Recorder[:errors]
  end

  def test_reloader_wraps_the_job_and_resets_current_attributes
    perform(job("ContextJob", ["a"]))
    perform(job("ContextJob", ["b"]))
    first, second = Recorder[:context]
    assert first["executor_active"], "the Rails executor/reloader is active inside perform"
    assert second["executor_active"]
    assert_nil second["current_before"], "CurrentAttributes were reset between jobs by the reloader"
    assert_kind_of Sidekiq::Rails::Reloader, Fastworker::Sidecar::Compat.reloader
  end

  def test_logger_context_carries_jid_class_tags_and_bid
    payload = job("ContextJob", [], "tags" => ["alpha"], "bid" => "batch-1")
    perform(payload)
    seen = Recorder[:context].first
    assert_equal({jid: payload["jid"], class: "ContextJob", tags: ["alpha"], bid: "batch-1"}, seen["sidekiq_context"])
    assert_equal "batch-1", seen["bid"], "bid= is set when the instance responds to it"
    line = LOG_IO.string.lines.grep(/hello from ContextJob/).first
    assert_includes line, "jid=#{payload["jid"]}"
    assert_includes line, "class=ContextJob"
    rails_line = LOG_IO.string.lines.grep(/rails logger line/).first
    assert_includes rails_line.to_s, "jid=#{payload["jid"]}", "Rails.logger is broadcast to Sidekiq.logger (server mode)"
    refute_match(/ INFO: start$/, LOG_IO.string, "no per-job start line by default")
  end

  def test_display_class_wins_in_the_logger_context
    perform(job("ContextJob", [], "display_class" => "Shown", "wrapped" => "Wrapped"))
    assert_equal "Shown", Recorder[:context].first["sidekiq_context"][:class]
  end

  def test_job_log_lines_only_when_asked
    ENV["FASTWORKER_SIDECAR_JOB_LOG"] = "1"
    payload = job("ContextJob")
    perform(payload)
    assert_match(/jid=#{payload["jid"]}.* INFO: start/, LOG_IO.string)
    assert_match(/jid=#{payload["jid"]}.*elapsed=.* INFO: done/, LOG_IO.string)
  ensure
    ENV.delete("FASTWORKER_SIDECAR_JOB_LOG")
  end

  def test_middleware_that_does_not_yield_is_done
    status, body = perform(job("ContextJob", [], "skip_me" => true))
    assert_equal 200, status
    assert_equal "done", body["status"]
    assert_empty Recorder[:context]
    assert_equal 1, Recorder[:middleware].size
  end

  def test_active_job_with_keyword_arguments_and_provider_job_id
    payload = aj_job(AjContextJob.new(41, label: "kw", count: 3))
    status, body = perform(payload)
    assert_equal 200, status, body.inspect
    seen = Recorder[:aj].first
    assert_equal 41, seen["value"]
    assert_equal "kw", seen["label"]
    assert_equal 3, seen["count"]
    assert_equal payload["jid"], seen["provider_job_id"]
    assert_equal "AjContextJob", seen["sidekiq_context"][:class], "the wrapped class names the log context"
  end

  def test_sidekiq8_wrapper_name_is_accepted
    payload = aj_job(AjContextJob.new(1, label: "eight"), "class" => "Sidekiq::ActiveJob::Wrapper",
      "created_at" => (Time.now.to_f * 1000).to_i, "enqueued_at" => (Time.now.to_f * 1000).to_i)
    status, body = perform(payload)
    assert_equal 200, status, body.inspect
    assert_equal "eight", Recorder[:aj].first["label"]
  end

  def test_active_job_retry_on_and_discard_on_stay_inside_ruby
    Sidekiq.redis(&:flushdb)
    status, _ = perform(aj_job(AjRetryOnJob.new("flaky")))
    assert_equal 200, status, "retry_on re-enqueued a new job; Sidekiq sees a success"
    assert_equal 1, Sidekiq.redis { |c| c.zcard("schedule") }, "the retry_on attempt went through the Sidekiq client"
    status, _ = perform(aj_job(AjRetryOnJob.new("hopeless")))
    assert_equal 200, status, "discard_on swallows the error"
  ensure
    Sidekiq.redis(&:flushdb)
  end

  def test_shutdown_in_the_cause_chain_is_not_a_failure
    status, body = perform(job("FailingJob", ["shutdown_cause"]))
    assert_equal 503, status
    assert_equal "shutdown", body["status"]
    assert_empty Recorder[:errors], "no error handlers for a shutdown"
    status, body = perform(job("FailingJob", ["shutdown"]))
    assert_equal [503, "shutdown"], [status, body["status"]]
  end

  def test_drain_slot_is_released_after_each_outcome
    perform(job("ContextJob"))
    perform(job("FailingJob", ["x"]))
    perform(job("FailingJob", ["shutdown"]))
    assert_equal 0, @drain.in_flight
  end
end

# The app's own job_logger (Sidekiq.options[:job_logger], 7.x+ config[:job_logger]) is the one
# Sidekiq's Processor uses, so it is the one the sidecar uses.
class CustomJobLoggerTest < Minitest::Test
  include SidecarTestHelpers

  class AppJobLogger < Sidekiq::JobLogger
    def prepare(job_hash, &block)
      Recorder.add(:job_logger, job_hash["jid"])
      super
    end
  end

  def test_the_apps_job_logger_prepares_every_job
    previous = Sidekiq.options[:job_logger]
    Sidekiq.options[:job_logger] = AppJobLogger
    @app = Fastworker::Sidecar::App.new(drain: @drain) # Setup is resolved once per Executor
    payload = job("ContextJob")
    status, = perform(payload)
    assert_equal 200, status
    assert_equal [payload["jid"]], Recorder[:job_logger]
  ensure
    Sidekiq.options[:job_logger] = previous
  end
end
