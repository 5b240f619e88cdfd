# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Metrics: the sidecar's own Prometheus metrics, in plain Ruby (text format 0.0.4).
    #
    # Duties:
    # 1. Count requests by endpoint and outcome (done, failed, shutdown, bad_request,
    #    unavailable, error); a /perform_batch counts each of its jobs.
    # 2. Observe request durations into a fixed-bucket histogram per endpoint (per job for
    #    /perform_batch).
    # 3. Render those plus the in-flight and capacity gauges read from the Drain.
    # A batch gathers its jobs' observations in a Tally of its own, folded in under the lock
    # once per request, so the per-job cost is a few additions.
    # Counts are per process: in cluster mode each Puma worker answers for itself.
    class Metrics
      BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60].freeze
      OVERFLOW = BUCKETS.size # the slot of observations above the last bound (only in +Inf)

      # Counts by outcome and a duration histogram, for one endpoint or one request.
      class Tally
        attr_reader :outcomes, :buckets, :sum, :count

        def initialize
          @outcomes = Hash.new(0)
          @buckets = Array.new(OVERFLOW + 1, 0)
          @sum = 0.0
          @count = 0
        end

        def add(outcome, seconds)
          @outcomes[outcome] += 1
          i = 0
          i += 1 while i < OVERFLOW && seconds > BUCKETS[i] # most jobs land in the first buckets
          @buckets[i] += 1
          @sum += seconds
          @count += 1
          self
        end

        def merge!(other)
          other.outcomes.each { |outcome, n| @outcomes[outcome] += n }
          other.buckets.each_with_index { |n, i| @buckets[i] += n }
          @sum += other.sum
          @count += other.count
          self
        end
      end

      def initialize(drain)
        @drain = drain
        @lock = Mutex.new
        @tallies = {} # endpoint => Tally
      end

      def observe(endpoint, outcome, seconds)
        @lock.synchronize { (@tallies[endpoint] ||= Tally.new).add(outcome, seconds) }
      end

      # Folds a request's own Tally in.
      def record(endpoint, tally)
        return if tally.count.zero?

        @lock.synchronize { (@tallies[endpoint] ||= Tally.new).merge!(tally) }
      end

      def count(endpoint, outcome)
        @lock.synchronize { @tallies.key?(endpoint) ? @tallies[endpoint].outcomes[outcome] : 0 }
      end

      def render
        tallies = @lock.synchronize { @tallies.transform_values { |t| Tally.new.merge!(t) } }.sort
        out = +""
        out << "# HELP fastworker_sidecar_requests_total Sidecar requests by endpoint and outcome.\n"
        out << "# TYPE fastworker_sidecar_requests_total counter\n"
        tallies.each do |endpoint, tally|
          tally.outcomes.sort.each do |outcome, n|
            out << %(fastworker_sidecar_requests_total{endpoint="#{endpoint}",outcome="#{outcome}"} #{n}\n)
          end
        end
        out << "# HELP fastworker_sidecar_in_flight Jobs running in this sidecar process.\n"
        out << "# TYPE fastworker_sidecar_in_flight gauge\n"
        out << "fastworker_sidecar_in_flight #{@drain.in_flight}\n"
        out << "# HELP fastworker_sidecar_capacity Jobs this sidecar process runs at once (Puma threads for jobs).\n"
        out << "# TYPE fastworker_sidecar_capacity gauge\n"
        out << "fastworker_sidecar_capacity #{@drain.capacity}\n"
        out << "# HELP fastworker_sidecar_request_duration_seconds Time to answer a request, by endpoint.\n"
        out << "# TYPE fastworker_sidecar_request_duration_seconds histogram\n"
        tallies.each { |endpoint, tally| render_histogram(out, endpoint, tally) }
        out
      end

      private

      def render_histogram(out, endpoint, tally)
        cumulative = 0
        BUCKETS.each_with_index do |bound, i|
          cumulative += tally.buckets[i]
          out << %(fastworker_sidecar_request_duration_seconds_bucket{endpoint="#{endpoint}",le="#{bound}"} #{cumulative}\n)
        end
        out << %(fastworker_sidecar_request_duration_seconds_bucket{endpoint="#{endpoint}",le="+Inf"} #{tally.count}\n)
        out << %(fastworker_sidecar_request_duration_seconds_sum{endpoint="#{endpoint}"} #{tally.sum.round(6)}\n)
        out << %(fastworker_sidecar_request_duration_seconds_count{endpoint="#{endpoint}"} #{tally.count}\n)
      end
    end
  end
end
