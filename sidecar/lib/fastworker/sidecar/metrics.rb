# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Metrics: the sidecar's own Prometheus metrics, in plain Ruby (text format 0.0.4).
    #
    # Duties:
    # 1. Count requests by endpoint and outcome (done, failed, shutdown, bad_request,
    #    unavailable).
    # 2. Observe request durations into a fixed-bucket histogram per endpoint.
    # 3. Render those plus the in-flight and capacity gauges read from the Drain.
    # Counts are per process: in cluster mode each Puma worker answers for itself.
    class Metrics
      BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60].freeze

      def initialize(drain)
        @drain = drain
        @lock = Mutex.new
        @requests = Hash.new(0)                  # [endpoint, outcome] => count
        @histograms = Hash.new { |h, k| h[k] = {buckets: Array.new(BUCKETS.size, 0), sum: 0.0, count: 0} }
      end

      def observe(endpoint, outcome, seconds)
        @lock.synchronize do
          @requests[[endpoint, outcome]] += 1
          hist = @histograms[endpoint]
          index = BUCKETS.bsearch_index { |bound| seconds <= bound }
          hist[:buckets][index] += 1 if index
          hist[:sum] += seconds
          hist[:count] += 1
        end
      end

      def count(endpoint, outcome)
        @lock.synchronize { @requests[[endpoint, outcome]] }
      end

      def render
        requests, histograms = @lock.synchronize do
          [@requests.dup, @histograms.transform_values { |h| {buckets: h[:buckets].dup, sum: h[:sum], count: h[:count]} }]
        end
        out = +""
        out << "# HELP fastworker_sidecar_requests_total Sidecar requests by endpoint and outcome.\n"
        out << "# TYPE fastworker_sidecar_requests_total counter\n"
        requests.sort.each do |(endpoint, outcome), n|
          out << %(fastworker_sidecar_requests_total{endpoint="#{endpoint}",outcome="#{outcome}"} #{n}\n)
        end
        out << "# HELP fastworker_sidecar_in_flight Jobs running in this sidecar process.\n"
        out << "# TYPE fastworker_sidecar_in_flight gauge\n"
        out << "fastworker_sidecar_in_flight #{@drain.in_flight}\n"
        out << "# HELP fastworker_sidecar_capacity Jobs this sidecar process runs at once (Puma threads for jobs).\n"
        out << "# TYPE fastworker_sidecar_capacity gauge\n"
        out << "fastworker_sidecar_capacity #{@drain.capacity}\n"
        out << "# HELP fastworker_sidecar_request_duration_seconds Time to answer a request, by endpoint.\n"
        out << "# TYPE fastworker_sidecar_request_duration_seconds histogram\n"
        histograms.sort.each { |endpoint, hist| render_histogram(out, endpoint, hist) }
        out
      end

      private

      def render_histogram(out, endpoint, hist)
        cumulative = 0
        BUCKETS.each_with_index do |bound, i|
          cumulative += hist[:buckets][i]
          out << %(fastworker_sidecar_request_duration_seconds_bucket{endpoint="#{endpoint}",le="#{bound}"} #{cumulative}\n)
        end
        out << %(fastworker_sidecar_request_duration_seconds_bucket{endpoint="#{endpoint}",le="+Inf"} #{hist[:count]}\n)
        out << %(fastworker_sidecar_request_duration_seconds_sum{endpoint="#{endpoint}"} #{hist[:sum].round(6)}\n)
        out << %(fastworker_sidecar_request_duration_seconds_count{endpoint="#{endpoint}"} #{hist[:count]}\n)
      end
    end
  end
end
