# frozen_string_literal: true

# Fastworker::Sidecar: runs Sidekiq jobs that the fastworker worker hands over HTTP.
#
# Duties of this file:
# 1. Require the sidecar's parts in dependency order (Sidekiq itself is required by Boot,
#    or by whoever loaded Sidekiq before us: config.ru, the tests).
# 2. Hold the process-wide singletons the Puma hook needs (the Drain) and the version
#    constants reported by GET /health.
# 3. Expose the job's Idempotency-Key to application code through a thread-local reader.
module Fastworker
  module Sidecar
    VERSION = "0.1.0"
    PROTOCOL_VERSION = 1
    IDEMPOTENCY_KEY = :fastworker_idempotency_key
    DEFAULT_DRAIN_TIMEOUT = "25"

    class << self
      # The Drain of this process (set by Launcher or config.ru); the Puma stop hook
      # drains it before letting Puma stop.
      attr_accessor :drain

      # Seconds to wait for in-flight jobs on TERM before raising Sidekiq::Shutdown in them:
      # --drain-timeout / FASTWORKER_SIDECAR_DRAIN_TIMEOUT when given (explicit), else the
      # largest --timeout the connected workers announced (Lifecycle), else 25 (Sidekiq's
      # default :timeout:).
      attr_writer :drain_timeout
      attr_accessor :drain_timeout_explicit

      def drain_timeout
        @drain_timeout ||= begin
          env = ENV["FASTWORKER_SIDECAR_DRAIN_TIMEOUT"].to_s.strip
          @drain_timeout_explicit = true unless env.empty?
          Float(env.empty? ? DEFAULT_DRAIN_TIMEOUT : env)
        end
      end

      # The workers' --timeout, announced on /lifecycle; ignored when the drain timeout was
      # set explicitly.
      def follow_worker_timeout(seconds)
        drain_timeout # resolve the explicit setting first
        @drain_timeout = Float(seconds) unless drain_timeout_explicit
      end

      # The Lifecycle of this process (set with the App), for the Puma stop hook.
      attr_accessor :lifecycle

      # The Idempotency-Key header of the request running on this thread (the job's jid as
      # sent by the worker), or nil outside a /perform. Jobs and middleware use it to
      # de-duplicate at-least-once deliveries.
      def current_idempotency_key
        Thread.current[IDEMPOTENCY_KEY]
      end

      # Per-job start/done lines (Sidekiq's JobLogger#call) are written only when asked:
      # the worker already writes them once (design.md "Logs").
      # For an app that really enqueues plain classes (not Sidekiq jobs): allow them by name,
      # e.g. in config/initializers/fastworker.rb. Same as FASTWORKER_SIDECAR_ALLOWED_CLASSES.
      def allow_classes(*names)
        JobClass.allowed.merge(names.flatten.map(&:to_s))
      end

      def job_log?
        %w[1 true yes].include?(ENV["FASTWORKER_SIDECAR_JOB_LOG"].to_s.downcase)
      end
    end
  end
end

require "json"
require "fastworker/sidecar/compat"
require "fastworker/sidecar/result"
require "fastworker/sidecar/payload"
require "fastworker/sidecar/error_report"
require "fastworker/sidecar/retry_advice"
require "fastworker/sidecar/remote_error"
require "fastworker/sidecar/client_push"
require "fastworker/sidecar/drain"
require "fastworker/sidecar/disconnect_watch"
require "fastworker/sidecar/lifecycle"
require "fastworker/sidecar/metrics"
require "fastworker/sidecar/limits"
require "fastworker/sidecar/auth"
require "fastworker/sidecar/failures" # after Auth: its seal key comes from the shared secret
require "fastworker/sidecar/exhausted"
require "fastworker/sidecar/door"
require "fastworker/sidecar/job_class"
require "fastworker/sidecar/executor"
require "fastworker/sidecar/job_threads"
require "fastworker/sidecar/thread_usage"
require "fastworker/sidecar/job_waits"
require "fastworker/sidecar/server_config"
require "fastworker/sidecar/app"
require "fastworker/sidecar/wiring"
