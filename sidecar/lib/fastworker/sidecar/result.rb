# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Result: what one request answers, as an HTTP status plus a JSON body.
    #
    # Duties:
    # 1. Name every outcome of the protocol (done, failed, shutdown, unavailable,
    #    bad_request) with its status code, so the app never picks codes itself.
    # 2. Serialise itself as a Rack response.
    class Result
      JSON_HEADERS = {"content-type" => "application/json"}.freeze

      attr_reader :status, :outcome, :body, :headers

      def initialize(status, outcome, body, headers = {})
        @status = status
        @outcome = outcome
        @body = body
        @headers = headers
      end

      # perform returned (also when a middleware did not yield).
      def self.done(jid, runtime_ms, extra = {})
        new(200, "done", {"jid" => jid, "status" => "done", "runtime_ms" => runtime_ms}.merge(extra))
      end

      # perform raised: the job spends a retry; body built by the Executor.
      def self.failed(body)
        new(422, "failed", body.merge("status" => "failed"))
      end

      # A Sidekiq::Shutdown interrupted the job: not its fault, requeue without a retry.
      def self.shutdown(jid)
        new(503, "shutdown", {"jid" => jid, "status" => "shutdown"})
      end

      # Booting, draining or at capacity: the job never started, requeue without a retry.
      # Booting/draining add Retry-After (the worker's breaker backs off); at capacity does
      # not: one overflow is no reason to stop sending.
      def self.unavailable(reason, jid = nil)
        headers = (reason == :at_capacity) ? {} : {"retry-after" => "1"}
        new(503, "unavailable", {"jid" => jid, "status" => "unavailable", "error" => reason.to_s}, headers)
      end

      def self.bad_request(reason)
        new(400, "bad_request", {"error" => reason})
      end

      def self.json(status, outcome, body)
        new(status, outcome, body)
      end

      def to_rack
        [status, JSON_HEADERS.merge(headers), [JSON.generate(body)]]
      end
    end
  end
end
