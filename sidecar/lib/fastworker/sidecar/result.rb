# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Result: what one request (or one job of a batch) answers, as an HTTP status plus a
    # JSON body.
    #
    # Duties:
    # 1. Name every outcome of the protocol (done, failed, shutdown, unavailable,
    #    bad_request) with its status code, so the app never picks codes itself.
    # 2. Serialise itself as a Rack response, or as one item of a /perform_batch answer
    #    (the /perform body with "status" always set, and "reason" for unavailable).
    # 3. Write a done job's body straight as JSON text (the same bytes JSON.generate gives),
    #    since it is by far the most frequent answer: no body hash unless someone asks.
    class Result
      JSON_HEADERS = {"content-type" => "application/json"}.freeze
      NO_HEADERS = {}.freeze

      attr_reader :status, :outcome, :headers

      def initialize(status, outcome, body, headers = NO_HEADERS)
        @status = status
        @outcome = outcome
        @body = body
        @headers = headers
      end

      # perform returned (also when a middleware did not yield).
      def self.done(jid, runtime_ms, extra = nil)
        Done.new(jid, runtime_ms, extra)
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
        headers = (reason == :at_capacity) ? NO_HEADERS : {"retry-after" => "1"}
        new(503, "unavailable", {"jid" => jid, "status" => "unavailable", "error" => reason.to_s}, headers)
      end

      # Refused for want of a job slot (the job never started).
      def at_capacity?
        @outcome == "unavailable" && @body["error"] == "at_capacity"
      end

      def self.bad_request(reason)
        new(400, "bad_request", {"error" => reason})
      end

      def self.json(status, outcome, body)
        new(status, outcome, body)
      end

      # A body already serialised (a /perform_batch answer).
      def self.json_text(status, outcome, text, headers = NO_HEADERS)
        new(status, outcome, nil, headers).tap { |r| r.instance_variable_set(:@text, text) }
      end

      def body
        @body
      end

      def to_rack
        [status, JSON_HEADERS.merge(headers), [@text || write_json(+"")]]
      end

      def write_json(out)
        out << JSON.generate(body)
      end

      def write_batch_item(out)
        item = body.merge("status" => body["status"] || outcome)
        item["reason"] = item["error"] if outcome == "unavailable"
        out << JSON.generate(item)
      end

      # The done answer: {"jid","status":"done","runtime_ms"} (+ extra keys such as "skipped").
      class Done < Result
        # A jid JSON.generate would write unchanged between quotes (Sidekiq's are hex).
        PLAIN_JID = /\A[0-9A-Za-z_\-]*\z/

        def initialize(jid, runtime_ms, extra)
          super(200, "done", nil)
          @jid = jid
          @runtime_ms = runtime_ms
          @extra = extra
        end

        def body
          @body ||= {"jid" => @jid, "status" => "done", "runtime_ms" => @runtime_ms}.tap { |b| b.merge!(@extra) if @extra }
        end

        def write_json(out)
          return super if @extra || !@runtime_ms.is_a?(Float)

          jid = @jid
          if jid.is_a?(String) && jid.ascii_only? && PLAIN_JID.match?(jid)
            out << '{"jid":"' << jid << '","status":"done","runtime_ms":'
          else
            out << '{"jid":' << JSON.generate(jid) << ',"status":"done","runtime_ms":'
          end
          out << @runtime_ms.to_s << "}"
        end

        # Its body already has "status": the item is the body.
        def write_batch_item(out)
          write_json(out)
        end
      end
    end
  end
end
