# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Payload: turns a request body into a job hash, or says why it is not a job.
    #
    # Duties:
    # 1. Parse the raw JSON exactly once (a fresh hash per request; the worker keeps the
    #    original bytes).
    # 2. Accept every Sidekiq payload shape (6.x float-second and 8.x integer-ms timestamps,
    #    unknown keys): only `class` (a non-empty String) and `args` (an Array) are required,
    #    as in Sidekiq's client validation.
    # 3. Raise Payload::Invalid with a short reason for anything else (→ 400), including JSON
    #    nested deeper than Limits::MAX_NESTING.
    class Payload
      class Invalid < StandardError; end

      def self.parse_job(raw)
        validate_job(parse_object(raw, "job"))
      end

      # The /exhausted body: {"job": {...}, "error": {"class": ..., "message": ...},
    # "run_exhausted_block": true|false (optional, default true), "phase": "all"|"block"|"death"
    # (optional, default "all")}.
      def self.parse_exhausted(raw)
        body = parse_object(raw, "body")
        job = body["job"]
        raise Invalid, "\"job\" must be a JSON object" unless job.is_a?(Hash)

        error = body["error"] || {}
        raise Invalid, "\"error\" must be a JSON object" unless error.is_a?(Hash)
        raise Invalid, "\"error.class\" must be a string" unless error["class"].nil? || error["class"].is_a?(String)

        run_block = body.fetch("run_exhausted_block", true)
        raise Invalid, "\"run_exhausted_block\" must be true or false" unless [true, false].include?(run_block)

        phase = body.fetch("phase", "all")
        raise Invalid, "\"phase\" must be one of #{Exhausted::PHASES.join(", ")}" unless Exhausted::PHASES.include?(phase)

        [validate_job(job), error, run_block, phase]
      end

      def self.parse_object(raw, what)
        raise Invalid, "empty body" if raw.nil? || raw.strip.empty?

        value = JSON.parse(raw, max_nesting: Limits::MAX_NESTING)
        raise Invalid, "#{what} must be a JSON object, got #{value.class.name}" unless value.is_a?(Hash)

        value
      rescue JSON::NestingError
        raise Invalid, "invalid JSON: nested deeper than #{Limits::MAX_NESTING} levels"
      rescue JSON::ParserError, EncodingError => e
        raise Invalid, "invalid JSON: #{e.message[0, 200]}"
      end

      def self.validate_job(job)
        klass = job["class"]
        raise Invalid, "job has no \"class\" string" unless klass.is_a?(String) && !klass.empty?
        raise Invalid, "job \"args\" must be an array" unless job["args"].is_a?(Array)

        job
      end
    end
  end
end
