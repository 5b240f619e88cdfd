# frozen_string_literal: true

# Boots test/dummy in this process exactly as the sidecar boots an app (Sidekiq server mode
# first), with Sidekiq's logger captured in LOG_IO, and offers request helpers.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
ENV["REDIS_URL"] ||= "redis://127.0.0.1:6379/13"
ENV["RAILS_ENV"] = "test"
# the suite runs signed, as users run it (TEST_SECRET signs every helper request)
TEST_SECRET = ENV["FASTWORKER_SIDECAR_SECRET"] = ENV.fetch("FASTWORKER_SIDECAR_SECRET") { "sidecar-test-secret-0123456789abcdef" }

require "minitest/autorun"
require "stringio"
require "securerandom"
require "tmpdir"
require "rack/mock"
require "fastworker/sidecar"
require "fastworker/sidecar/boot"

Fastworker::Sidecar::Boot.sidekiq_server!
LOG_IO = StringIO.new
Sidekiq.logger = Sidekiq::Logger.new(LOG_IO)
DUMMY_ROOT = File.expand_path("dummy", __dir__)
Fastworker::Sidecar::Boot.boot!(DUMMY_ROOT, environment: "test")

module SidecarTestHelpers
  WRAPPER = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"

  def setup
    Recorder.reset!
    LOG_IO.truncate(0)
    LOG_IO.rewind
    @drain = Fastworker::Sidecar::Drain.new(capacity: 4)
    @drain.ready!
    @app = Fastworker::Sidecar::App.new(drain: @drain)
  end

  def jid
    SecureRandom.hex(12)
  end

  def job(klass, args = [], extra = {})
    {"class" => klass, "args" => args, "jid" => jid, "queue" => "default", "retry" => true,
     "created_at" => Time.now.to_f, "enqueued_at" => Time.now.to_f}.merge(extra)
  end

  # The payload Rails 6.1's Sidekiq adapter writes for an ActiveJob.
  def aj_job(active_job, extra = {})
    {"class" => WRAPPER, "wrapped" => active_job.class.name, "queue" => active_job.queue_name,
     "args" => [active_job.serialize], "retry" => true, "jid" => jid,
     "created_at" => Time.now.to_f, "enqueued_at" => Time.now.to_f}.merge(extra)
  end

  # The headers the worker adds (fastworker/signing.py), as Rack env keys; `sign: false` sends none.
  def signature(method, path, raw, idempotency = "", secret: TEST_SECRET, at: Time.now.to_i, nonce: SecureRandom.hex(12))
    mac = OpenSSL::HMAC.hexdigest("SHA256", secret, Fastworker::Sidecar::Auth.canonical(method, path, at.to_s, nonce, idempotency) + raw)
    {"HTTP_X_FASTWORKER_TIMESTAMP" => at.to_s, "HTTP_X_FASTWORKER_NONCE" => nonce,
     "HTTP_X_FASTWORKER_SIGNATURE" => "v1=#{mac}"}
  end

  def post(path, body, headers = {}, sign: true, **more)
    headers = headers.merge(more)
    raw = body.is_a?(String) ? body : JSON.generate(body)
    env = {method: "POST", input: raw, "CONTENT_TYPE" => "application/json"}
    headers.each { |k, v| env["HTTP_#{k.upcase.tr("-", "_")}"] = v }
    env.merge!(signature("POST", path, raw, headers["Idempotency-Key"] || headers["Idempotency-Keys"] || "")) if sign
    response = Rack::MockRequest.new(@app).request("POST", path, env)
    [response.status, parse(response.body)]
  end

  def get(path, sign: true)
    response = Rack::MockRequest.new(@app).get(path, sign ? signature("GET", path, "") : {})
    [response.status, response.content_type.to_s.include?("json") ? parse(response.body) : response.body]
  end

  # headers as a Hash or as trailing "Name" => value pairs
  def perform(payload, headers = {}, sign: true, **more)
    post("/perform", payload, headers.merge(more), sign: sign)
  end

  def parse(body)
    JSON.parse(body)
  rescue JSON::ParserError
    body
  end
end
