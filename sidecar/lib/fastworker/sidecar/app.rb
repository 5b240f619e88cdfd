# frozen_string_literal: true

module Fastworker
  module Sidecar
    # App: the Rack application speaking the sidecar protocol (design.md, version 1).
    #
    # Duties:
    # 1. Route: POST /perform, POST /exhausted, GET /health, GET /metrics; 404/405 otherwise.
    # 2. /perform: parse (400 when the body is not a job), hand over to the Executor, which
    #    admits it through the Drain (503 when booting, draining or at capacity) and runs it
    #    (200 / 422 / 503).
    # 3. /exhausted: parse, run the Exhausted hooks, 200 (503 only while booting).
    # 4. /health: 200 with versions and in-flight count once booted, 503 otherwise.
    # 5. Observe every protocol request in Metrics; turn an internal error into a 500, which
    #    the worker treats like an unavailable sidecar (requeue, no retry spent).
    # The app is served outside the Rails middleware stack, so the reloader wraps each job once.
    class App
      TEXT_HEADERS = {"content-type" => "text/plain; version=0.0.4; charset=utf-8"}.freeze

      attr_reader :drain, :metrics

      def initialize(drain:, metrics: Metrics.new(drain), executor: Executor.new(drain), exhausted: Exhausted.new)
        @drain = drain
        @metrics = metrics
        @executor = executor
        @exhausted = exhausted
      end

      def call(env)
        case env["PATH_INFO"]
        when "/perform" then protocol(env, "perform") { perform(env) }
        when "/exhausted" then protocol(env, "exhausted") { exhausted(env) }
        when "/health" then get_only(env) { health.to_rack }
        when "/metrics" then get_only(env) { [200, TEXT_HEADERS.dup, [@metrics.render]] }
        else Result.json(404, "not_found", {"error" => "not found"}).to_rack
        end
      end

      private

      def protocol(env, endpoint)
        return Result.json(405, "method_not_allowed", {"error" => "use POST"}).to_rack unless env["REQUEST_METHOD"] == "POST"

        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        result = begin
          yield
        rescue Payload::Invalid => e
          Result.bad_request(e.message)
        rescue => e
          Compat.logger.error("fastworker-sidecar: internal error on /#{endpoint}: #{e.class}: #{e.message}")
          Result.json(500, "error", {"status" => "error", "error" => "#{e.class}: #{e.message}"[0, 1000]})
        end
        @metrics.observe(endpoint, result.outcome, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started)
        result.to_rack
      end

      def get_only(env)
        return Result.json(405, "method_not_allowed", {"error" => "use GET"}).to_rack unless %w[GET HEAD].include?(env["REQUEST_METHOD"])

        yield
      end

      def perform(env)
        raw = read_body(env)
        job = Payload.parse_job(raw)
        @executor.call(job, raw, idempotency_key: env["HTTP_IDEMPOTENCY_KEY"])
      end

      def exhausted(env)
        return Result.unavailable(:booting) if @drain.state == :booting

        job, error, run_block = Payload.parse_exhausted(read_body(env))
        Result.json(200, "done", @exhausted.call(job, error, run_block: run_block))
      end

      def health
        body = {"status" => @drain.ready? ? "ok" : @drain.state.to_s, "sidekiq" => ::Sidekiq::VERSION,
                "rails" => rails_version, "protocol" => PROTOCOL_VERSION, "in_flight" => @drain.in_flight,
                "capacity" => @drain.capacity, "pid" => Process.pid}
        Result.json(@drain.ready? ? 200 : 503, body["status"], body)
      end

      def rails_version
        (defined?(::Rails) && ::Rails.respond_to?(:version)) ? ::Rails.version : nil
      end

      def read_body(env)
        input = env["rack.input"]
        return "" unless input

        input.rewind if input.respond_to?(:rewind)
        body = input.read || +""
        body.force_encoding(Encoding::UTF_8)
      end
    end
  end
end
