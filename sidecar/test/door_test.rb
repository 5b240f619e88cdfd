# frozen_string_literal: true

require_relative "helper"

# The Door: every protocol request is signed (401 otherwise, and nothing runs), fresh, used
# once, and not too large (413); /health tells an unsigned caller nothing sensitive.
class DoorTest < Minitest::Test
  include SidecarTestHelpers

  def raw_post(path, raw, env = {})
    response = Rack::MockRequest.new(@app).request("POST", path, {input: raw}.merge(env))
    [response.status, parse(response.body)]
  end

  def assert_refused(status, body, reason)
    assert_equal 401, status
    assert_match reason, body["error"]
    assert_empty Recorder[:context], "the job must not have run"
  end

  def test_unsigned_request_runs_nothing
    assert_refused(*perform(job("ContextJob"), {}, sign: false), /missing signature/)
  end

  def test_badly_signed_requests_run_nothing
    raw = JSON.generate(job("ContextJob"))
    assert_refused(*raw_post("/perform", raw, signature("POST", "/perform", raw, secret: "x" * 40)), /bad signature/)
    # a good signature for another body, path or method
    other = JSON.generate(job("ContextJob", [2]))
    assert_refused(*raw_post("/perform", raw, signature("POST", "/perform", other)), /bad signature/)
    assert_refused(*raw_post("/perform", raw, signature("POST", "/exhausted", raw)), /bad signature/)
    assert_refused(*raw_post("/perform", raw, signature("GET", "/perform", raw)), /bad signature/)
    # the Idempotency-Key is signed too
    env = signature("POST", "/perform", raw, "jid-a").merge("HTTP_IDEMPOTENCY_KEY" => "jid-b")
    assert_refused(*raw_post("/perform", raw, env), /bad signature/)
    assert_equal 0, @app.metrics.count("perform", "done")
  end

  def test_stale_request_runs_nothing
    raw = JSON.generate(job("ContextJob"))
    [-31, 31].each do |skew|
      assert_refused(*raw_post("/perform", raw, signature("POST", "/perform", raw, at: Time.now.to_i + skew)), /stale/)
    end
  end

  def test_replayed_request_runs_once
    raw = JSON.generate(job("ContextJob"))
    env = signature("POST", "/perform", raw)
    assert_equal 200, raw_post("/perform", raw, env).first
    assert_equal 1, Recorder[:context].size
    status, body = raw_post("/perform", raw, env)
    assert_equal [401, "unauthorized: replayed request"], [status, body["error"]]
    assert_equal 1, Recorder[:context].size, "the replay ran nothing"
  end

  def test_the_replay_set_keeps_no_object_per_request
    auth = Fastworker::Sidecar::Auth.new("s" * 40)
    sign = lambda do |nonce|
      at = Time.now.to_i.to_s
      mac = OpenSSL::HMAC.hexdigest("SHA256", "s" * 40, Fastworker::Sidecar::Auth.canonical("POST", "/perform", at, nonce, "") + "")
      {"HTTP_X_FASTWORKER_TIMESTAMP" => at, "HTTP_X_FASTWORKER_NONCE" => nonce,
       "HTTP_X_FASTWORKER_SIGNATURE" => "v1=#{mac}", "REQUEST_METHOD" => "POST", "SCRIPT_NAME" => "", "PATH_INFO" => "/perform"}
    end
    GC.start
    before = ObjectSpace.count_objects[:T_STRING]
    2_000.times { |i| assert_nil auth.check(sign.call(format("nonce-%016d", i)), "") }
    GC.start
    # the nonces stay remembered (a replay is refused) but not as strings: kept strings live
    # long enough to be promoted and cost the process major GCs
    assert_operator ObjectSpace.count_objects[:T_STRING] - before, :<, 200
    assert_equal "replayed request", auth.check(sign.call(format("nonce-%016d", 7)), "")
  end

  def test_batch_and_exhausted_are_signed_too
    raw = JSON.generate(job("ContextJob"))
    assert_refused(*raw_post("/perform_batch", raw), /missing signature/)
    exhausted = JSON.generate({"job" => job("ExhaustedJob"), "error" => {"class" => "RuntimeError", "message" => "x"}})
    assert_refused(*raw_post("/exhausted", exhausted), /missing signature/)
    assert_empty Recorder[:exhausted]
  end

  def test_health_is_open_but_reveals_nothing_unless_signed
    status, open = get("/health", sign: false)
    assert_equal 200, status
    assert_equal %w[batch batch_max max_body pipeline protocol status], open.keys.sort
    _, signed = get("/health")
    assert_equal Sidekiq::VERSION, signed["sidekiq"]
    assert_equal Process.pid, signed["pid"]
  end

  def test_metrics_need_a_signature_unless_opened
    assert_equal 401, get("/metrics", sign: false).first
    assert_equal 200, get("/metrics").first
    @app = Fastworker::Sidecar::App.new(drain: @drain, door: Fastworker::Sidecar::Door.from_env(
      "FASTWORKER_SIDECAR_SECRET" => TEST_SECRET, "FASTWORKER_SIDECAR_OPEN_METRICS" => "1"))
    assert_equal 200, get("/metrics", sign: false).first
    assert_equal 401, perform(job("ContextJob"), {}, sign: false).first, "only /metrics is opened"
  end

  def test_a_short_secret_is_refused_naming_the_variable
    error = assert_raises(Fastworker::Sidecar::Auth::SecretError) do
      Fastworker::Sidecar::Door.from_env("FASTWORKER_SIDECAR_SECRET" => "x" * 31)
    end
    assert_match(/FASTWORKER_SIDECAR_SECRET: the secret must be at least 32 bytes, got 31/, error.message)
    refute_includes error.message, "x" * 31
    Dir.mktmpdir do |dir|
      path = File.join(dir, "secret")
      File.write(path, "short\n")
      error = assert_raises(Fastworker::Sidecar::Auth::SecretError) do
        Fastworker::Sidecar::Door.from_env("FASTWORKER_SIDECAR_SECRET_FILE" => path)
      end
      assert_match(/FASTWORKER_SIDECAR_SECRET_FILE/, error.message)
      File.write(path, "#{TEST_SECRET}\n") # a secret file's trailing newline is not part of it
      @app = Fastworker::Sidecar::App.new(drain: @drain, door: Fastworker::Sidecar::Door.from_env("FASTWORKER_SIDECAR_SECRET_FILE" => path))
      assert_equal 200, perform(job("ContextJob")).first
    end
  end

  def test_a_body_over_the_limit_is_413_before_parsing
    big = JSON.generate(job("ContextJob", ["x" * (5 * 1024 * 1024)]))
    status, body = post("/perform", big)
    assert_equal 413, status
    assert_match(/too large.*limit is 5242880.*FASTWORKER_SIDECAR_MAX_BODY/, body["error"])
    # declared too large: refused without reading (and without checking a signature)
    status, = raw_post("/perform", "{}", "CONTENT_LENGTH" => (6 * 1024 * 1024).to_s)
    assert_equal 413, status
    @app = Fastworker::Sidecar::App.new(drain: @drain, door: Fastworker::Sidecar::Door.from_env(
      "FASTWORKER_SIDECAR_SECRET" => TEST_SECRET, "FASTWORKER_SIDECAR_MAX_BODY" => "400"))
    assert_equal 413, perform(job("ContextJob", ["y" * 400])).first
    assert_equal 200, perform(job("ContextJob")).first
    assert_equal 400, get("/health", sign: false).last["max_body"]
    assert_equal 1, Recorder[:context].size
  end

  def test_deep_nesting_is_a_clear_400
    deep = %({"class":"ContextJob","args":#{"[" * 200}#{"]" * 200}})
    status, body = post("/perform", deep)
    assert_equal [400, "invalid JSON: nested deeper than 100 levels"], [status, body["error"]]
  end

  def test_invalid_utf8_is_a_clear_400_on_every_endpoint
    %w[/perform /perform_batch /exhausted].each do |path|
      status, body = post(path, "{\"class\":\"ContextJob\",\"args\":[\"\xff\xfe\"]}".b)
      assert_equal [400, "request body is not valid UTF-8"], [status, body["error"]], path
    end
    assert_empty Recorder[:context]
  end
end
