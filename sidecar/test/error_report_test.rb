# frozen_string_literal: true

require_relative "helper"

# The 422 body: Sidekiq's error fields (job_retry.rb) and the error handlers' context.
class ErrorReportTest < Minitest::Test
  include SidecarTestHelpers

  def test_failure_body_and_error_handler_context
    payload = job("FailingJob", ["boom"])
    raw = JSON.generate(payload)
    status, body = perform(raw)
    assert_equal 422, status
    assert_equal "failed", body["status"]
    assert_equal payload["jid"], body["jid"]
    assert_equal "RuntimeError", body["error_class"]
    assert_equal "boom", body["error_message"]
    assert_nil body["retry_in"]
    assert_equal true, body["retry"]
    assert_equal "local", body["stage"]
    refute body.key?("backtrace"), "no backtrace unless the job asks"

    ex, ctx = Recorder[:errors].last
    assert_equal "boom", ex.message
    assert_equal "Job raised exception", ctx[:context]
    assert_equal payload["jid"], ctx[:job]["jid"]
    assert_equal raw, ctx[:jobstr]
  end

  def test_message_is_cut_to_10000_characters
    _, body = perform(job("FailingJob", ["long", 20_000]))
    assert_equal 10_000, body["error_message"].length
    assert_equal "ArgumentError", body["error_class"]
  end

  def test_invalid_utf8_is_scrubbed
    status, body = perform(job("FailingJob", ["binary"]))
    assert_equal 422, status
    assert body["error_message"].valid_encoding?
    assert_equal "bad bytes \uFFFD\uFFFD end", body["error_message"]
  end

  def test_message_that_raises
    _, body = perform(job("FailingJob", ["message_raises"]))
    assert_equal "!!! ERROR MESSAGE THREW AN ERROR !!!", body["error_message"]
    assert_equal "FailingJob::MessageRaises", body["error_class"]
  end

  def test_backtrace_true_and_n_cleaned_by_rails
    _, all = perform(job("FailingJob", ["x"], "backtrace" => true))
    _, two = perform(job("FailingJob", ["x"], "backtrace" => 2))
    assert_operator all["backtrace"].size, :>=, 1
    assert all["backtrace"].first.start_with?("app/jobs/failing_job.rb:"), all["backtrace"].inspect
    refute all["backtrace"].any? { |l| l.include?("/gems/") }, "Rails.backtrace_cleaner removed gem lines"
    assert_operator two["backtrace"].size, :<=, 2
    assert_equal all["backtrace"].first(2), two["backtrace"]
  end

  def test_backtrace_without_cleaner_keeps_every_line
    report = Fastworker::Sidecar::ErrorReport.new(raise_and_rescue, {"backtrace" => 3}, cleaner: nil)
    assert_equal 3, report.backtrace.size
    assert_includes report.backtrace.first, "error_report_test.rb"
  end

  def test_unknown_class_is_a_name_error_failure_without_hooks
    payload = job("NoSuchJob", [1])
    status, body = perform(payload)
    assert_equal 422, status
    assert_equal "NameError", body["error_class"]
    assert_equal "uninitialized constant NoSuchJob", body["error_message"], "no error_highlight snippet of sidecar code"
    _, nested = perform(job("Nope::Inner", []))
    assert_equal ["NameError", "uninitialized constant Nope"], nested.values_at("error_class", "error_message")
    assert_equal "global", body["stage"]
    assert_nil body["retry_in"]
    assert_equal true, body["retry"]
    assert_equal "Job raised exception", Recorder[:errors].last[1][:context]
  end

  def test_class_retry_option_when_payload_lacks_retry
    payload = job("FailingJob", ["x"])
    payload.delete("retry")
    _, body = perform(payload)
    assert_equal 7, body["retry"]
    _, body = perform(job("FailingJob", ["x"], "retry" => 2))
    assert_equal 2, body["retry"], "the payload's own option wins"
  end

  def test_retry_in_values
    expectations = {"int" => 42, "float" => 7, "duration" => 120, "zero" => nil, "nil" => nil,
                    "discard" => "discard", "kill" => "kill", "count" => 100, "text" => 600, "words" => nil}
    expectations.each do |message, wanted|
      status, body = perform(job("RetryInJob", [message]))
      assert_equal 422, status
      if wanted.nil?
        assert_nil body["retry_in"], message
      else
        assert_equal wanted, body["retry_in"], message
      end
    end
  end

  def test_retry_in_count_follows_retry_count
    _, body = perform(job("RetryInJob", ["count"], "retry_count" => 4))
    assert_equal 105, body["retry_in"], "count = retry_count + 1"
  end

  # JobRetry calls delay_for only while retries remain: the failure that exhausts them never
  # reaches the block (an app that counts or logs in it sees Sidekiq's calls, not more).
  def test_retry_in_is_not_called_on_the_final_failure
    _, body = perform(job("RetryInJob", ["count"], "retry" => 3, "retry_count" => 2))
    assert_nil body["retry_in"]
    _, body = perform(job("RetryInJob", ["count"], "retry_count" => 24)) # retry: true, 25 by default
    assert_nil body["retry_in"]
    _, body = perform(job("RetryInJob", ["count"], "retry_for" => 60, "retry_count" => 0, "failed_at" => Time.now.to_f - 120))
    assert_nil body["retry_in"], "8.x retry_for: the window is over"
    assert_empty Recorder[:retry_in_calls]
    _, body = perform(job("RetryInJob", ["count"], "retry" => 3, "retry_count" => 1))
    assert_equal 102, body["retry_in"], "one retry left: called with count 2"
    assert_equal [2], Recorder[:retry_in_calls]
  end

  def test_retry_in_block_that_raises_falls_back_and_tells_error_handlers
    _, body = perform(job("RetryInJob", ["raise"]))
    assert_nil body["retry_in"]
    contexts = Recorder[:errors].map { |_, ctx| ctx[:context] }
    assert(contexts.any? { |c| c.start_with?("Failure scheduling retry using the defined `sidekiq_retry_in` in RetryInJob") }, contexts.inspect)
    assert_includes contexts, "Job raised exception"
  end

  def test_retry_in_block_with_three_arguments_gets_the_job_hash
    _, body = perform(job("RetryInJobHashJob", [33]))
    assert_equal 33, body["retry_in"]
  end

  def test_retry_in_from_the_wrapped_active_job_class
    payload = aj_job(AjHooksJob.new("x"), "retry_count" => 1)
    status, body = perform(payload)
    assert_equal 422, status
    assert_equal "RuntimeError", body["error_class"]
    assert_equal "aj failure", body["error_message"]
    assert_equal 79, body["retry_in"], "77 + count (2): the block of the wrapped class"
  end

  def test_lambda_with_two_parameters
    advice = Fastworker::Sidecar::RetryAdvice.new({"class" => "X"}, lambda_class(->(count, _ex) { count + 9 }))
    assert_equal 9, advice.retry_in(RuntimeError.new("x"))
  end

  private

  def lambda_class(block)
    Class.new do
      define_singleton_method(:sidekiq_retry_in_block) { block }
    end
  end

  def raise_and_rescue
    raise "here"
  rescue => e
    e
  end
end

# Sidekiq's Processor#process gives a job it cannot parse to the error handlers ("Invalid JSON for
# job", with the raw jobstr) before the morgue; the worker writes the dead set and sends the raw
# bytes here, so the handlers see Ruby's own parse error.
class InvalidJobTest < Minitest::Test
  include SidecarTestHelpers

  def test_an_invalid_json_job_reaches_the_error_handlers
    status, body = post("/invalid", "{not json")
    assert_equal [200, true], [status, body["reported"]]
    ex, ctx = Recorder[:errors].first
    assert_kind_of JSON::ParserError, ex
    assert_equal({context: "Invalid JSON for job", jobstr: "{not json"}, ctx)
  end

  def test_a_parseable_body_reaches_no_handler
    status, body = post("/invalid", "[1, 2]")
    assert_equal [200, false], [status, body["reported"]]
    assert_empty Recorder[:errors]
  end

  def test_it_needs_a_signature
    assert_equal 401, post("/invalid", "{not json", sign: false).first
    assert_empty Recorder[:errors]
  end
end
