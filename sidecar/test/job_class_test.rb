# frozen_string_literal: true

require_relative "helper"

# Only jobs run: a constant that is not a Sidekiq job (or an ActiveJob behind the wrapper) is
# never instantiated, and the answer is a 400 the worker dead-letters without retries.
class JobClassTest < Minitest::Test
  include SidecarTestHelpers

  def teardown
    Fastworker::Sidecar::JobClass.allowed.clear
  end

  def test_a_plain_class_with_perform_is_never_instantiated
    status, body = perform(job("PlainPerformer", [1]))
    assert_equal 400, status
    assert_match(/\APlainPerformer is never run: it is not a Sidekiq job class/, body["error"])
    assert_empty Recorder[:plain_new]
    assert_empty Recorder[:plain_perform]
    assert_equal 1, @app.metrics.count("perform", "bad_request")
  end

  def test_core_constants_are_refused
    %w[Kernel File Object IO Fastworker::Sidecar::App].each do |name|
      status, body = perform(job(name, ["/etc/passwd"]))
      assert_equal 400, status, name
      assert_match(/\A#{Regexp.escape(name)} is never run/, body["error"])
    end
  end

  def test_refused_in_a_batch_too
    raw = JSON.generate(job("PlainPerformer"))
    env = {input: raw}.merge(signature("POST", "/perform_batch", raw))
    items = JSON.parse(Rack::MockRequest.new(@app).request("POST", "/perform_batch", env).body)
    assert_equal "bad_request", items[0]["status"]
    assert_match(/PlainPerformer is never run/, items[0]["error"])
    assert_empty Recorder[:plain_new]
  end

  def test_the_activejob_wrapper_runs_only_activejob_classes
    aj = aj_job(AjContextJob.new(1, label: "x", count: 1))
    assert_equal 200, perform(aj).first
    aj["args"][0]["job_class"] = "PlainPerformer"
    status, body = perform(aj.merge("jid" => jid))
    assert_equal 400, status
    assert_match(/PlainPerformer is never run: it is not an ActiveJob class/, body["error"])
    assert_empty Recorder[:plain_new]
  end

  # The wrapped class of every ActiveJob is checked, so a name that passed is not looked up
  # again; one that was refused is looked up, and refused, every time.
  def test_a_wrapped_activejob_class_is_looked_up_once_and_a_refused_one_every_time
    Fastworker::Sidecar::JobClass.activejob_names.clear
    lookups = Hash.new(0)
    compat = Fastworker::Sidecar::Compat
    original = compat.method(:constantize)
    counting = ->(name) { lookups[name] += 1; original.call(name) }
    compat.define_singleton_method(:constantize, &counting)
    begin
      3.times { assert_equal 200, perform(aj_job(AjContextJob.new(1, label: "x", count: 1))).first }
      2.times do
        aj = aj_job(AjContextJob.new(1, label: "x", count: 1))
        aj["args"][0]["job_class"] = "PlainPerformer"
        assert_equal 400, perform(aj).first
      end
    ensure
      compat.define_singleton_method(:constantize, original)
    end
    assert_equal [1, 2], [lookups["AjContextJob"], lookups["PlainPerformer"]]
    assert_empty Recorder[:plain_new]
  end

  def test_an_allowed_plain_class_runs
    Fastworker::Sidecar.allow_classes("PlainPerformer")
    assert_equal 200, perform(job("PlainPerformer", [7])).first
    assert_equal [[7]], Recorder[:plain_perform]
  end
end
