# frozen_string_literal: true

require_relative "helper"

# POST /exhausted: sidekiq_retries_exhausted + death handlers (Sidekiq 7.2–8.0.6 semantics).
class ExhaustedTest < Minitest::Test
  include SidecarTestHelpers

  def dead_job(klass, args, extra = {})
    job(klass, args, {"retry" => 0, "retry_count" => 0, "error_class" => "RuntimeError",
                      "error_message" => "always", "failed_at" => Time.now.to_f}.merge(extra))
  end

  def test_runs_block_then_death_handlers
    payload = dead_job("ExhaustedJob", ["plain"])
    status, body = post("/exhausted", {"job" => payload, "error" => {"class" => "RuntimeError", "message" => "always"}})
    assert_equal 200, status
    assert_equal({"jid" => payload["jid"], "status" => "done", "result" => nil, "death_handlers" => 1}, body)
    seen = Recorder[:exhausted].first
    assert_equal "RuntimeError", seen["error_class"]
    assert_equal "always", seen["message"]
    assert_equal "always", seen["job"]["error_message"], "the block gets the updated job hash"
    job_hash, ex = Recorder[:deaths].first
    assert_equal payload["jid"], job_hash["jid"]
    assert_kind_of RuntimeError, ex
  end

  def test_phases_run_the_block_or_the_death_handlers_and_refuse_others
    error = {"class" => "RuntimeError", "message" => "always"}
    _, block = post("/exhausted", {"job" => dead_job("ExhaustedJob", ["plain"]), "error" => error, "phase" => "block"})
    assert_equal [1, 0], [Recorder[:exhausted].size, block["death_handlers"]]
    _, death = post("/exhausted", {"job" => dead_job("ExhaustedJob", ["plain"]), "error" => error, "phase" => "death"})
    assert_equal [1, 1], [Recorder[:exhausted].size, death["death_handlers"]]
    status, = post("/exhausted", {"job" => dead_job("ExhaustedJob", ["plain"]), "error" => error, "phase" => "later"})
    assert_equal 400, status
  end

  def test_discard_result_skips_death_handlers
    _, body = post("/exhausted", {"job" => dead_job("ExhaustedJob", ["discard"]), "error" => {"class" => "RuntimeError", "message" => "x"}})
    assert_equal "discard", body["result"]
    assert_equal 0, body["death_handlers"]
    assert_empty Recorder[:deaths]
  end

  def test_block_that_raises_is_reported_and_death_handlers_still_run
    _, body = post("/exhausted", {"job" => dead_job("ExhaustedJob", ["raise"]), "error" => {"class" => "RuntimeError", "message" => "x"}})
    assert_nil body["result"]
    assert_equal 1, Recorder[:deaths].size
    assert_equal "Error calling retries_exhausted", Recorder[:errors].last[1][:context]
  end

  def test_block_from_the_wrapped_active_job_class
    payload = aj_job(AjHooksJob.new("x"), "retry" => 3, "retry_count" => 3)
    _, body = post("/exhausted", {"job" => payload, "error" => {"class" => "RuntimeError", "message" => "aj failure"}})
    assert_equal "done", body["status"]
    assert_equal [{"aj" => true, "wrapped" => "AjHooksJob", "message" => "aj failure"}], Recorder[:exhausted]
  end

  def test_retry_false_and_global_errors_only_run_death_handlers
    post("/exhausted", {"job" => dead_job("NoRetryJob", [], "retry" => false), "error" => {"class" => "RuntimeError", "message" => "x"}})
    post("/exhausted", {"job" => dead_job("ExhaustedJob", []), "error" => {"class" => "NoMethodError", "message" => "x", "stage" => "global"}})
    post("/exhausted", {"job" => dead_job("ExhaustedJob", []), "error" => {"class" => "RuntimeError", "message" => "x"}, "run_exhausted_block" => false})
    assert_empty Recorder[:exhausted]
    assert_equal 3, Recorder[:deaths].size
  end

  def test_exception_of_the_reported_class_or_a_stand_in
    post("/exhausted", {"job" => dead_job("ExhaustedJob", []), "error" => {"class" => "ArgumentError", "message" => "bad arg"}})
    post("/exhausted", {"job" => dead_job("ExhaustedJob", []), "error" => {"class" => "Nope::Missing", "message" => "gone"}})
    first, second = Recorder[:deaths].map(&:last)
    assert_equal [ArgumentError, "bad arg"], [first.class, first.message]
    assert_kind_of Fastworker::Sidecar::RemoteError, second
    assert_equal ["Nope::Missing", "gone"], [second.remote_class, second.message]
  end

  def test_a_hook_in_another_process_gets_the_exception_sealed_in_the_422_answer
    payload = dead_job("ExhaustedJob", ["suspended"])
    status, failed = post("/perform", payload)
    assert_equal 422, status
    assert_kind_of String, failed["exception"], "the 422 answer carries the sealed exception"
    Fastworker::Sidecar::Failures.clear # as in another Puma worker, or after a restart
    error = {"class" => failed["error_class"], "message" => failed["error_message"], "exception" => failed["exception"]}
    post("/exhausted", {"job" => payload, "error" => error})
    ex = Recorder[:deaths].last.last
    assert_equal [ExhaustedJob::Suspended, "acme", "billing said no"], [ex.class, ex.tenant, ex.cause&.message]
    assert_match(/exhausted_job\.rb/, ex.backtrace.first)
    # a seal this sidecar did not make is never unmarshalled: the hook gets a stand-in instead
    forged = Base64.strict_encode64(("\0" * 32) + Marshal.dump(ExhaustedJob::Suspended.new("mallory")))
    post("/exhausted", {"job" => payload, "error" => error.merge("exception" => forged)})
    ex = Recorder[:deaths].last.last
    assert_equal [ExhaustedJob::Suspended, "tenant acme is suspended", nil], [ex.class, ex.message, ex.tenant]
  end

  def test_an_exception_marshal_cannot_dump_is_not_sealed
    ex = RuntimeError.new("holds a proc")
    ex.instance_variable_set(:@callback, -> {})
    assert_nil Fastworker::Sidecar::Failures.keep(jid, ex)
    assert_nil Fastworker::Sidecar::Failures.fetch("no-such-jid", sealed: "not base64!")
  end

  def test_unknown_job_class_still_runs_death_handlers
    status, body = post("/exhausted", {"job" => dead_job("NoSuchJob", []), "error" => {"class" => "NameError", "message" => "uninitialized constant NoSuchJob"}})
    assert_equal [200, 1], [status, body["death_handlers"]]
  end

  def test_bad_bodies
    assert_equal 400, post("/exhausted", "nope").first
    assert_equal 400, post("/exhausted", {"job" => [1]}).first
    assert_equal 400, post("/exhausted", {"job" => {"class" => "X", "args" => []}, "error" => "str"}).first
  end
end
