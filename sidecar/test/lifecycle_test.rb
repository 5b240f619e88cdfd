# frozen_string_literal: true

require "helper"
require "socket"

# Issue 10: a job the worker gives back stops (POST /cancel, a closed connection), and the
# app's lifecycle blocks fire from the workers' /lifecycle events.
class LifecycleTest < Minitest::Test
  include SidecarTestHelpers

  def perform_env(payload, socket)
    raw = JSON.generate(payload)
    env = Rack::MockRequest.env_for("/perform", {method: "POST", input: raw}.merge(signature("POST", "/perform", raw)))
    env["puma.socket"] = socket
    status, _, body = @app.call(env)
    [status, JSON.parse(body.join)]
  end

  def test_cancel_stops_the_running_job_with_shutdown_and_says_so
    payload = job("SlowJob", [5])
    runner = Thread.new { perform(payload) }
    sleep 0.01 until @drain.in_flight == 1
    status, answer = post("/cancel", {"jids" => [payload["jid"], "nope"], "grace" => 2})
    assert_equal 200, status
    assert_equal({"stopped" => [payload["jid"]], "running" => [], "unknown" => ["nope"]}, answer)
    assert_equal "shutdown", runner.value[1]["status"]
    assert_empty Recorder[:slow]
    assert_equal 0, @drain.in_flight
  end

  def test_a_closed_request_connection_stops_its_job
    mine, theirs = UNIXSocket.pair
    refute Fastworker::Sidecar::DisconnectWatch.closed?(mine)
    payload = job("SlowJob", [5])
    runner = Thread.new { perform_env(payload, mine) }
    sleep 0.01 until @drain.in_flight == 1
    theirs.close # the worker gave the job back and hung up
    status, body = runner.value
    assert_equal [503, "shutdown"], [status, body["status"]]
    assert_empty Recorder[:slow]
  ensure
    mine&.close
  end

  # The worker pipelines batches: the next request's bytes wait in front of its FIN, so a peek
  # sees data, and only the TCP state tells that it hung up.
  def test_a_hang_up_behind_a_pipelined_request_is_seen
    server = TCPServer.new("127.0.0.1", 0)
    client = TCPSocket.new("127.0.0.1", server.addr[1])
    accepted = server.accept
    client.write("POST /perform_batch HTTP/1.1\r\n")
    sleep 0.01 until accepted.wait_readable(0)
    refute Fastworker::Sidecar::DisconnectWatch.closed?(accepted), "open, with a request waiting"
    client.close
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 2
    sleep 0.01 until Fastworker::Sidecar::DisconnectWatch.closed?(accepted) || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    assert Fastworker::Sidecar::DisconnectWatch.closed?(accepted)
  ensure
    [client, accepted, server].each { |io| io&.close unless io&.closed? }
  end

  def test_the_rest_of_a_cancelled_batch_is_not_run
    slow = job("SlowJob", [5])
    after = job("ContextJob", ["after"])
    raw = [slow, after].map { |j| JSON.generate(j) }.join("\n")
    runner = Thread.new do
      Rack::MockRequest.new(@app).request("POST", "/perform_batch", {input: raw}.merge(signature("POST", "/perform_batch", raw)))
    end
    sleep 0.01 until @drain.in_flight == 1
    post("/cancel", {"jids" => [slow["jid"], after["jid"]]})
    items = JSON.parse(runner.value.body)
    assert_equal(%w[shutdown unavailable], items.map { |i| i["status"] })
    assert_empty Recorder[:context]
  end

  def with_lifecycle_blocks
    events = Fastworker::Sidecar::Compat.option(:lifecycle_events)
    saved = events.transform_values(&:dup)
    seen = []
    events.each_key { |name| events[name] << -> { seen << name } }
    events[:startup] << -> { raise "a broken startup block" }
    yield seen
  ensure
    events.replace(saved)
  end

  def test_events_fire_as_the_sidekiq_server_fires_them_for_two_workers
    with_lifecycle_blocks do |seen|
      call = ->(event, id, **kw) { post("/lifecycle", {"event" => event, "identity" => id}.merge(kw.transform_keys(&:to_s))) }
      assert_equal 200, call.("startup", "a", timeout: 7)[0]
      call.("startup", "b", timeout: 3)
      assert_equal [:startup], seen # once, and a raising block does not stop the others
      assert_equal 7.0, Fastworker::Sidecar.drain_timeout unless Fastworker::Sidecar.drain_timeout_explicit
      call.("beat", "a")
      call.("beat", "b")
      assert_equal %i[startup heartbeat], seen.first(2) # :heartbeat on the first beat only (6.4.1 has no :beat)
      assert_equal 1, seen.count(:heartbeat)
      call.("quiet", "a")
      refute_includes seen, :quiet # b still works
      refute @drain.stopping?
      call.("quiet", "b")
      assert_equal 1, seen.count(:quiet)
      assert @drain.stopping? # IterableJob checkpoints now
      call.("shutdown", "a")
      refute_includes seen, :shutdown
      call.("shutdown", "b")
      call.("shutdown", "b") # a repeated goodbye changes nothing
      assert_equal 1, seen.count(:shutdown)
      assert_equal 1, seen.count(:startup)
      assert_operator seen.index(:quiet), :<, seen.index(:shutdown)
      # a worker that starts after the last one stopped begins a new cycle
      call.("startup", "c")
      assert_equal 2, seen.count(:startup)
    end
  ensure
    Fastworker::Sidecar.drain_timeout = nil
  end

  def test_sidekiqs_options_follow_the_largest_settings_the_live_workers_announced
    opts = Fastworker::Sidecar::ServerConfig.options
    before = %i[timeout concurrency max_retries].to_h { |k| [k, opts[k]] }
    post("/lifecycle", {"event" => "startup", "identity" => "a", "timeout" => 8, "concurrency" => 3, "max_retries" => 4})
    post("/lifecycle", {"event" => "beat", "identity" => "b", "timeout" => 2.5, "concurrency" => 12, "max_retries" => "9"})
    assert_equal({timeout: 8, concurrency: 12, max_retries: 4}, %i[timeout concurrency max_retries].to_h { |k| [k, opts[k]] })
    post("/lifecycle", {"event" => "shutdown", "identity" => "b"})
    post("/lifecycle", {"event" => "beat", "identity" => "a", "timeout" => 8, "concurrency" => 3, "max_retries" => 4})
    assert_equal 3, opts[:concurrency] # b is gone: a's again
  ensure
    before&.each { |k, v| opts[k] = v }
    Fastworker::Sidecar.drain_timeout = nil
  end

  def test_a_settings_event_sets_the_options_and_fires_nothing
    # another Puma worker of a cluster: it hears the worker's settings, never its lifecycle
    opts = Fastworker::Sidecar::ServerConfig.options
    before = %i[timeout concurrency max_retries].to_h { |k| [k, opts[k]] }
    with_lifecycle_blocks do |seen|
      status, body = post("/lifecycle", {"event" => "settings", "identity" => "w1", "timeout" => 6, "concurrency" => 4, "max_retries" => 2})
      assert_equal 200, status
      assert_equal 0, body["workers"]
      assert_equal({timeout: 6, concurrency: 4, max_retries: 2}, %i[timeout concurrency max_retries].to_h { |k| [k, opts[k]] })
      assert_equal 6.0, Fastworker::Sidecar.drain_timeout unless Fastworker::Sidecar.drain_timeout_explicit
      assert_empty seen # no :startup, no :heartbeat
      # the worker stopped: its settings no longer count (another worker's smaller ones do)
      post("/lifecycle", {"event" => "settings", "identity" => "w2", "timeout" => 3, "concurrency" => 2, "max_retries" => 1})
      post("/lifecycle", {"event" => "settings", "identity" => "w1", "gone" => true})
      assert_equal({timeout: 3, concurrency: 2, max_retries: 1}, %i[timeout concurrency max_retries].to_h { |k| [k, opts[k]] })
      assert_empty seen
    end
  ensure
    before&.each { |k, v| opts[k] = v }
    Fastworker::Sidecar.drain_timeout = nil
  end

  def test_the_workers_concurrency_sizes_the_redis_pool_as_sidekiq_c_does_unless_the_app_chose_a_size
    sc = Fastworker::Sidecar::ServerConfig
    skip "6.x sizes one server pool from :concurrency; 7.x+ sizes a pool per capsule" if sc.modern?
    opts = sc.options
    before = [opts[:concurrency], Sidekiq.redis_pool]
    sc.watch_redis!
    Sidekiq.redis = {url: ENV["REDIS_URL"], size: 30} # Sidekiq refuses one under its concurrency + 2
    chosen = Sidekiq.redis_pool
    sc.follow_workers(concurrency: 4)
    assert_same chosen, Sidekiq.redis_pool, "the app's own :size stays, and its pool"
    Sidekiq.redis = {url: ENV["REDIS_URL"]}
    sc.follow_workers(concurrency: 4)
    assert_equal 4 + 5, Sidekiq.redis_pool.size
    Sidekiq.redis { |c| assert_equal "PONG", c.ping } # built from the app's hash
    resized = Sidekiq.redis_pool
    sc.follow_workers(concurrency: 4) # each beat says it again: built once
    assert_same resized, Sidekiq.redis_pool
  ensure
    opts[:concurrency] = before[0] if before
    Sidekiq.redis = before[1] if before
  end

  def test_lifecycle_is_refused_while_booting_and_bad_events_are_400
    assert_equal 400, post("/lifecycle", {"event" => "explode", "identity" => "a"})[0]
    assert_equal 400, post("/lifecycle", {"event" => "startup"})[0]
    booting = Fastworker::Sidecar::Drain.new(capacity: 1)
    @app = Fastworker::Sidecar::App.new(drain: booting)
    assert_equal 503, post("/lifecycle", {"event" => "startup", "identity" => "a"})[0]
  end
end
