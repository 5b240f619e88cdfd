# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Limits: the bounds on what one request may carry, so that a huge or hostile body is
    # refused with a clear error instead of being parsed.
    #
    # Duties:
    # 1. The body size limit (FASTWORKER_SIDECAR_MAX_BODY bytes, default 5 MB, the worker's
    #    default --max-job-bytes too): over it, 413 before anything reads the JSON.
    # 2. The batch length (jobs in one /perform_batch) and the JSON nesting depth, each with
    #    its error message.
    class Limits
      MAX_BODY = 5 * 1024 * 1024
      MAX_BATCH = 100
      MAX_NESTING = 100
      BODY_ENV = "FASTWORKER_SIDECAR_MAX_BODY"

      attr_reader :max_body

      def self.from_env(env = ENV)
        raw = env[BODY_ENV].to_s.strip
        return new if raw.empty?

        value = Integer(raw, 10)
        raise ArgumentError unless value.positive?

        new(max_body: value)
      rescue ArgumentError
        raise ArgumentError, "#{BODY_ENV}=#{raw.inspect} is not a positive integer (bytes)"
      end

      def initialize(max_body: MAX_BODY)
        @max_body = max_body
      end

      def too_large(size = nil)
        shown = size ? "#{size} bytes" : "more than #{@max_body} bytes"
        "request body too large: #{shown}, the limit is #{@max_body} (#{BODY_ENV})"
      end
    end
  end
end
