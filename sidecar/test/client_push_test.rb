# frozen_string_literal: true

require_relative "helper"

# POST /client_push: due members through the app's client middleware, as Sidekiq's poller
# pushes them with Sidekiq::Client (normalize_item, the chain, raw_push's enqueued_at).
class ClientPushTest < Minitest::Test
  include SidecarTestHelpers

  # A middleware as an app installs one: stamps, reroutes, schedules, drops or raises.
  class Tagger
    def call(worker_class, job, queue, _pool)
      Recorder.add(:client, [worker_class, queue, job["jid"]])
      job["tagged"] = true
      case job["args"].first
      when "drop" then return nil
      when "boom" then raise ArgumentError, "tenant unknown"
      when "reroute" then job["queue"] = "critical"
      when "later" then job["at"] = 1_900_000_000.5
      end
      yield
    end
  end

  def with_middleware
    Sidekiq.client_middleware { |chain| chain.add Tagger }
    yield
  ensure
    Sidekiq.client_middleware { |chain| chain.remove Tagger }
  end

  def push(*members)
    post("/client_push", {"jobs" => members.map { |m| JSON.generate(m) }})
  end

  def test_health_says_whether_the_app_has_client_middleware
    assert_equal false, get("/health")[1]["client_middleware"]
    with_middleware { assert_equal true, get("/health")[1]["client_middleware"] }
  end

  def test_each_member_is_normalized_and_run_through_the_chain
    with_middleware do
      plain = {"class" => "ExhaustedJob", "args" => ["x"], "jid" => "a" * 24} # no queue, no retry
      status, body = push(plain, job("ExhaustedJob", ["reroute"]), job("ExhaustedJob", ["drop"]),
        job("ExhaustedJob", ["boom"]), job("ExhaustedJob", ["later"]))
      assert_equal 200, status
      first, reroute, drop, boom, later = body["jobs"]
      pushed = JSON.parse(first["job"])
      assert_equal "default", first["queue"]
      assert_equal %w[retry queue class args jid created_at tagged enqueued_at], pushed.keys
      assert_equal true, pushed["retry"]
      assert_in_delta Time.now.to_f, pushed["enqueued_at"], 5
      assert_equal "critical", reroute["queue"]
      assert_equal({"dropped" => true}, drop)
      assert_equal "ArgumentError: tenant unknown", boom["error"]
      assert_equal "Client middleware for a due job", Recorder[:errors].last[1][:context]
      assert_equal 1_900_000_000.5, later["at"]
      refute JSON.parse(later["job"]).key?("at")
      # the class name, as the poller passes it (a String), and the job's queue
      assert_equal ["ExhaustedJob", "default", "a" * 24], Recorder[:client].first
    end
  end

  def test_a_body_without_jobs_is_refused
    status, = post("/client_push", {"jobs" => "nope"})
    assert_equal 400, status
  end
end
