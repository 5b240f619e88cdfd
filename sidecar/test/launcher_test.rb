# frozen_string_literal: true

require_relative "helper"
require "net/http"
require "socket"
require "tmpdir"
require "fileutils"

# bin/fastworker-sidecar as a real process: boot, /health, capacity over HTTP, drain on TERM,
# cluster mode, option errors.
class LauncherTest < Minitest::Test
  include SidecarTestHelpers

  BIN = File.expand_path("../bin/fastworker-sidecar", __dir__)

  def setup
    Recorder.reset!
  end

  def teardown
    return unless @pid

    Process.kill("KILL", @pid)
    Process.wait(@pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end

  def start(*args, env: {})
    @port = free_port
    @log = File.join(Dir.tmpdir, "fastworker-sidecar-test-#{@port}.log")
    @pid = Process.spawn({"RAILS_ENV" => "test", "FASTWORKER_SIDECAR_DRAIN_TIMEOUT" => "10"}.merge(env),
      RbConfig.ruby, BIN, "--rails-root", DUMMY_ROOT, "--port", @port.to_s, *args,
      out: @log, err: @log)
    deadline = Time.now + 30
    until Time.now > deadline
      status = begin
        http(:get, "/health").first
      rescue SystemCallError
        nil
      end
      return if status == 200

      sleep 0.1
    end
    flunk "sidecar did not become healthy: #{File.read(@log)}"
  end

  def http(method, path, body = nil)
    Net::HTTP.start("127.0.0.1", @port, read_timeout: 30) do |h|
      headers = signature(method.to_s.upcase, path, body.to_s).transform_keys { |k| k.delete_prefix("HTTP_").tr("_", "-") }
      response = (method == :get) ? h.get(path, headers) : h.post(path, body, headers.merge("content-type" => "application/json"))
      [response.code.to_i, (JSON.parse(response.body) rescue response.body)]
    end
  end

  # The x-fastworker-pid of n /perform answers on one keep-alive connection.
  def answering_pids(n)
    Net::HTTP.start("127.0.0.1", @port, read_timeout: 30) do |h|
      Array.new(n) do
        job = JSON.generate({"class" => "ContextJob", "args" => [], "jid" => SecureRandom.hex(12), "retry" => true})
        headers = signature("POST", "/perform", job).transform_keys { |k| k.delete_prefix("HTTP_").tr("_", "-") }
        response = h.post("/perform", job, headers.merge("content-type" => "application/json"))
        assert_equal "200", response.code
        Integer(response["x-fastworker-pid"])
      end
    end
  end

  def perform(klass, args)
    http(:post, "/perform", JSON.generate({"class" => klass, "args" => args, "jid" => SecureRandom.hex(12), "retry" => true}))
  end

  def free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  def wait_exit(timeout)
    deadline = Time.now + timeout
    while Time.now < deadline
      pid, status = Process.wait2(@pid, Process::WNOHANG)
      if pid
        @pid = nil
        return status
      end
      sleep 0.05
    end
    nil
  end

  def test_serves_jobs_and_answers_503_beyond_capacity
    start("--threads", "1")
    _, health = http(:get, "/health")
    assert_equal [1, 1, "ok"], [health["capacity"], health["workers"], health["status"]]
    assert_equal [@pid] * 3, answering_pids(3), "single mode: the launcher process answers"
    assert_equal 200, perform("ContextJob", [1]).first
    assert_equal 422, perform("NoSuchJob", []).first
    slow = Thread.new { perform("SlowJob", [1]) }
    sleep 0.3
    status, body = perform("ContextJob", [2])
    assert_equal [503, "at_capacity"], [status, body["error"]]
    assert_equal 200, slow.value.first
  end

  def test_term_drains_running_jobs_then_exits
    start("--threads", "2")
    slow = Thread.new { perform("SlowJob", [1.5]) }
    sleep 0.3
    Process.kill("TERM", @pid)
    sleep 0.3
    status, body = perform("ContextJob", [])
    assert_equal [503, "draining"], [status, body["error"]], "the listener stays open while draining"
    assert_equal 503, http(:get, "/health").first
    assert_equal 200, slow.value.first, "the in-flight job finished"
    exit_status = wait_exit(15)
    refute_nil exit_status, "exited after the drain"
    assert exit_status.success?, "clean exit: #{exit_status.inspect}"
  end

  def test_hard_stop_after_drain_timeout_answers_shutdown
    start("--threads", "1", "--drain-timeout", "0.5")
    slow = Thread.new { perform("SlowJob", [30]) }
    sleep 0.3
    Process.kill("TERM", @pid)
    status, body = slow.value
    assert_equal [503, "shutdown"], [status, body["status"]]
    refute_nil wait_exit(10)
  end

  def test_cluster_mode
    start("--threads", "2", "--workers", "2")
    statuses = Array.new(6) { perform("ContextJob", []).first }
    assert_equal [200] * 6, statuses
    pids = Array.new(8) { http(:get, "/health").last["pid"] }.uniq
    refute_includes pids, @pid, "jobs run in forked workers"
    _, health = http(:get, "/health")
    assert_equal [2, 2], health.values_at("workers", "capacity"), "workers per sidecar, job slots per process"
    answered = answering_pids(4)
    assert_equal 1, answered.uniq.size, "one keep-alive connection stays with one Puma worker"
    refute_equal @pid, answered.first
    Process.kill("TERM", @pid)
    refute_nil wait_exit(20)
  end

  def test_boot_failure_exits_1
    Dir.mktmpdir do |root|
      FileUtils.mkdir_p(File.join(root, "config"))
      File.write(File.join(root, "config", "environment.rb"), "raise 'this app cannot boot'\n")
      out = IO.popen([RbConfig.ruby, BIN, "--rails-root", root, "--port", free_port.to_s, err: [:child, :out]], &:read)
      assert_equal 1, $?.exitstatus
      assert_match(/boot failed: RuntimeError: this app cannot boot/, out)
    end
  end

  def test_bad_options_exit_64
    out = IO.popen([RbConfig.ruby, BIN, "--rails-root", "/nonexistent", err: [:child, :out]], &:read)
    assert_equal 64, $?.exitstatus
    assert_match(%r{/nonexistent has no config/environment.rb}, out)
    out = IO.popen([RbConfig.ruby, BIN, "--rails-root", DUMMY_ROOT, "--threads", "zero", err: [:child, :out]], &:read)
    assert_equal 64, $?.exitstatus
    assert_match(/threads/, out)
    out = IO.popen({"FASTWORKER_SIDECAR_THREADS" => "x"}, [RbConfig.ruby, BIN, err: [:child, :out]], &:read)
    assert_equal 64, $?.exitstatus
    assert_match(/FASTWORKER_SIDECAR_THREADS/, out)
  end
  def test_a_public_bind_without_a_secret_does_not_start
    env = {"FASTWORKER_SIDECAR_SECRET" => nil}
    ["0.0.0.0", "::", "192.0.2.1"].each do |addr|
      out = IO.popen(env, [RbConfig.ruby, BIN, "--rails-root", DUMMY_ROOT, "--bind", addr, "--port", free_port.to_s,
        err: [:child, :out]], &:read)
      assert_equal 64, $?.exitstatus, addr
      assert_match(/--bind #{Regexp.escape(addr)}: .*needs FASTWORKER_SIDECAR_SECRET/, out)
    end
    out = IO.popen(env.merge("FASTWORKER_SIDECAR_SECRET" => "too-short"), [RbConfig.ruby, BIN, "--rails-root", DUMMY_ROOT,
      err: [:child, :out]], &:read)
    assert_equal 64, $?.exitstatus
    assert_match(/FASTWORKER_SIDECAR_SECRET: the secret must be at least 32 bytes/, out)
    refute_includes out, "too-short"
  end

  def test_listens_on_loopback_by_default_and_signed_on_0000
    start("--threads", "1", env: {"FASTWORKER_SIDECAR_SECRET" => TEST_SECRET})
    assert_match(/127\.0\.0\.1:#{@port}/, File.read(@log))
    Process.kill("KILL", @pid)
    Process.wait(@pid)
    start("--threads", "1", "--bind", "0.0.0.0", env: {"FASTWORKER_SIDECAR_SECRET" => TEST_SECRET})
    assert_equal 200, perform("ContextJob", [1]).first
    code, = Net::HTTP.start("127.0.0.1", @port) { |h| [h.post("/perform", "{}", "content-type" => "application/json").code.to_i] }
    assert_equal 401, code
  end
end

# The Puma configuration the launcher builds (no process started).
class LauncherConfigTest < Minitest::Test
  def puma_options(*args)
    require "puma"
    require "puma/configuration"
    require "fastworker/sidecar/launcher"
    launcher = Fastworker::Sidecar::Launcher.new(["--rails-root", DUMMY_ROOT, *args], {})
    config = launcher.send(:puma_configuration, ->(_env) { [200, {}, []] })
    config.load
    config.options
  end

  def test_idle_keep_alive_connections_stay_open
    assert_equal 3600, puma_options[:persistent_timeout], "Puma's 20 s default would move a quiet worker connection"
  end

  # Accepted connections inherit TCP_NODELAY from the listening socket: without it, the answer to
  # a pipelined /perform_batch waited for the worker's delayed ACK (up to 40 ms) under Nagle.
  def test_tcp_answers_go_out_without_nagle_delay
    require "puma"
    require "puma/binder"
    require "puma/events"
    port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
    binder = ::Puma::Binder.new(::Puma::Events.null)
    binder.parse(puma_options("--port", port.to_s)[:binds], ::Puma::Events.null)
    client = TCPSocket.new("127.0.0.1", port)
    accepted = binder.ios.first.accept
    assert_equal 1, accepted.getsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY).int
  ensure
    [client, accepted].each { |io| io&.close }
    binder&.close
  end

  def test_cluster_mode_preloads_the_app
    options = puma_options("--workers", "2")
    assert_equal 2, options[:workers]
    assert options[:preload_app]
    assert_equal 3600, options[:persistent_timeout]
  end
end
