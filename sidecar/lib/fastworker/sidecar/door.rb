# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Door: what a request must pass before the App looks at it.
    #
    # Duties, in this order, for POST /perform, /perform_batch and /exhausted:
    # 1. Size: a declared or actual body over Limits#max_body gets 413; the body is read at
    #    most one byte past the limit and never parsed.
    # 2. Signature (when a secret is set): Auth#check over the raw bytes; 401 with the reason
    #    otherwise, and nothing runs. The checked body is handed to the App (env BODY), so it
    #    is read once. A body that is not valid UTF-8 gets 400 here (JSON is UTF-8).
    # 3. GET /metrics needs a signature too, unless FASTWORKER_SIDECAR_OPEN_METRICS=1 (for a
    #    Prometheus scrape on a private network); so does GET /config (it holds the Redis URL).
    # 4. GET /health stays open, but an unsigned caller sees only what the worker needs to
    #    talk to us (status, protocol, batch support, limits): no versions, pid or load.
    # Without a secret the door is open: the Launcher allows that on loopback only.
    class Door
      PROTOCOL = %w[/perform /perform_batch /exhausted /cancel /lifecycle /invalid].freeze
      BODY = "fastworker.body"
      AUTHENTIC = "fastworker.authentic"
      PUBLIC_HEALTH = %w[status protocol batch batch_max pipeline].freeze
      OPEN_METRICS_ENV = "FASTWORKER_SIDECAR_OPEN_METRICS"
      LOG_EVERY = 10 # seconds between two "refused" log lines: a flood must not flood the log

      attr_reader :auth, :limits, :refused

      def self.from_env(env = ENV)
        secret = Auth.load_secret(env)
        new(auth: secret && Auth.new(secret), limits: Limits.from_env(env),
          open_metrics: %w[1 true yes].include?(env[OPEN_METRICS_ENV].to_s.downcase))
      end

      def initialize(auth: nil, limits: Limits.new, open_metrics: false)
        @auth = auth
        @limits = limits
        @open_metrics = open_metrics
        @refused = 0
        @logged_at = nil
      end

      # nil: let the App answer; otherwise the Rack response of the refusal.
      def call(env)
        path = env["PATH_INFO"]
        if PROTOCOL.include?(path)
          protocol(env)
        elsif path == "/metrics"
          (@auth.nil? || @open_metrics) ? nil : signed_get(env)
        elsif path == "/config" # the resolved configuration holds the Redis URL, password and all
          @auth.nil? ? nil : signed_get(env)
        elsif path == "/health"
          env[AUTHENTIC] = @auth.nil? || (@auth.signed?(env) && @auth.check(env, "").nil?)
          nil
        end
      end

      # GET /health's answer as this caller may see it.
      def health(env, result)
        body = env[AUTHENTIC] ? result.body.dup : result.body.slice(*PUBLIC_HEALTH)
        body["max_body"] = @limits.max_body
        Result.json(result.status, result.outcome, body)
      end

      private

      def protocol(env)
        declared = env["CONTENT_LENGTH"].to_s
        return refuse(413, @limits.too_large(declared.to_i)) if /\A\d+\z/.match?(declared) && declared.to_i > @limits.max_body

        body = read(env)
        return refuse(413, @limits.too_large) if body.nil?

        if @auth
          reason = @auth.check(env, body)
          return refuse(401, "unauthorized: #{reason}") if reason
        end
        # JSON is UTF-8 (RFC 8259) and so is every payload Sidekiq writes; anything else would
        # break string handling deep inside the App, so it stops here with a clear 400
        return refuse(400, "request body is not valid UTF-8") unless body.valid_encoding?

        env[BODY] = body
        nil
      end

      def signed_get(env)
        reason = @auth.check(env, "")
        reason ? refuse(401, "unauthorized: #{reason}") : nil
      end

      def read(env)
        input = env["rack.input"]
        return +"" unless input

        input.rewind if input.respond_to?(:rewind)
        body = input.read(@limits.max_body + 1) || +""
        return nil if body.bytesize > @limits.max_body

        body.force_encoding(Encoding::UTF_8)
      end

      def refuse(status, reason)
        @refused += 1
        now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        if @logged_at.nil? || now - @logged_at >= LOG_EVERY
          @logged_at = now
          Compat.logger.warn("fastworker-sidecar: refused a request (#{status}): #{reason}; #{@refused} refused so far")
        end
        outcome = {401 => "unauthorized", 413 => "too_large"}.fetch(status, "bad_request")
        Result.json(status, outcome, {"error" => reason}).to_rack
      end
    end
  end
end
