# frozen_string_literal: true

module Fastworker
  module Sidecar
    # JobWaits: which batches run their jobs at the same time (JobThreads) and which run them
    # one after the other on the request's thread.
    #
    # Duties:
    # 1. Learn, per job class, how long its jobs compute (their thread's CPU time) and how long
    #    they wait (wall time minus that: a Redis or SQL round trip, a sleep, any blocking
    #    call; nothing for a job that never blocked, see ThreadUsage). Every LEARN_EVERY-th
    #    batch run one after the other teaches it (per class, the batch's means, folded into
    #    moving averages). Jobs run at the same time also wait for the GVL, which says nothing
    #    about the job, so they teach nothing.
    # 2. `plan(jobs)` => [threads, waiting]: threads more than 1 when the batch holds jobs of
    #    classes that wait WAIT_MIN or more and at least OVERLAP_MIN of what they compute,
    #    TOTAL_MIN or more in all. Such a job leaves the GVL free while it waits, so another one
    #    computes meanwhile. A job that mostly computes gains nothing from other threads: on a
    #    busy machine its wall time also holds the moments the OS ran another process, which
    #    look like waiting but are in proportion to its CPU time, hence the second test.
    #    `waiting` (the worker then sends such jobs one request per process, none pipelined)
    #    only when they wait at least as long as they compute: jobs that wait less, one quick
    #    query each, still keep Ruby busy between batches, and a pipelined request behind them
    #    waits less than Ruby would idle without it. Every PROBE-th batch that would run
    #    together runs one after the other instead, to learn again; the first probes come
    #    sooner (after 8 and 16 such batches), because batches run together teach nothing
    #    and the first figures are the least sure. A class not yet seen does not wait.
    # Only this class decides; the Executor runs each job the same way either way.
    class JobWaits
      WAIT_MIN = 30e-6 # seconds: below this, handing a job to another thread costs what it saves
      TOTAL_MIN = 150e-6 # seconds of waiting in one batch, at least
      # Wait / CPU from which a second thread pays. bench/vs_sidekiq.py --kind redis (an RPUSH
      # per job: 64 us of wait, 113 of CPU), one process, two interleaved rounds: 5,463 / 5,804
      # jobs/s against 5,092 / 5,254 when only classes waiting as long as they compute had one.
      OVERLAP_MIN = 0.4
      # One thread per job for batches that wait (#plan), where it was 1 + wait / CPU.
      # bench/vs_sidekiq.py --kind wait --log warn --servers fastworker --jobs 15000 --warmup 3000,
      # interleaved rounds, 2026-12-05: one process 3,489 / 3,607 / 3,686 jobs/s against 3,326 /
      # 3,461 / 3,358; the whole machine 5,999 / 6,000 / 5,813 against 5,876 / 5,925 / 5,867. Jobs
      # that wait less (--kind redis) kept their threads: one each measured 5,416-5,951 against
      # 5,431-6,025.
      PROBE = 32
      FIRST_PROBE = 8
      LEARN_EVERY = 4
      ALPHA = 0.2
      # Weight of a sample below the average. What a job costs is only ever inflated (a cold
      # first run, a GC, a preemption), so a lower figure is closer to the truth. Replayed
      # (test_a_cold_first_sample_is_outgrown), a first sample of 1 ms of CPU against 60 us
      # after it kept a class that waits 5 times what it computes on 2 threads for all of
      # tests/test_waiting_jobs.py's 160 batches, as one CI run on b185868 found (2 at once).
      ALPHA_DOWN = 0.5
      SPIKE = 4.0 # a batch's mean counts at most this many times the average (a GC pause, a preemption)
      FLOOR = 50e-6 # the spike limit never falls under SPIKE times this (an average near 0)
      SERIAL = [1, false].freeze

      # The class a job is known by: the wrapped ActiveJob class, else the job class.
      def self.class_of(job)
        return nil unless job.is_a?(Hash)

        wrapped = job["wrapped"]
        wrapped.is_a?(String) ? wrapped : job["class"].to_s
      end

      def initialize
        @waits = {} # class name => [wait seconds, CPU seconds] per job
        @waiting = {} # the classes of @waits that wait (worth overlapping), the same values
        @together = 0
        @probe_every = FIRST_PROBE
        @serial = 0
        @probe = false
      end

      # [wait, CPU] seconds per job of this class, or nil.
      def of(klass)
        @waits[klass]
      end

      # [threads, waiting]. threads: how many a batch of these jobs runs on, 1 (one after the
      # other) or, for jobs that wait less than they compute, as many as keep one job computing
      # while the others wait, 1 + wait / CPU of its waiting jobs (each extra thread costs a
      # hand-over). Jobs that wait at least as long get one thread each: all their waits then
      # overlap and the batch answers sooner, which is what the worker waits for while its
      # request is the only one on that process (the figures are under OVERLAP_MIN). waiting:
      # whether its jobs wait at least as long as they compute, also on a probe run one after
      # the other (the App tells the worker, which then keeps such jobs in one request: a
      # second one pipelined behind it would wait for all of them on one thread).
      def plan(jobs)
        return SERIAL if @waiting.empty? || jobs.size < 2 # the common case costs nothing per job

        wait = cpu = 0.0
        jobs.each do |job|
          w, c = @waiting[JobWaits.class_of(job)]
          next unless w

          wait += w
          cpu += c
        end
        return SERIAL if wait < TOTAL_MIN

        waiting = wait >= cpu
        @together += 1
        if @together >= @probe_every
          @together = 0
          @probe_every = [@probe_every * 2, PROBE].min
          @probe = true
          return [1, waiting]
        end
        return [jobs.size, true] if waiting

        [[jobs.size, 1 + (wait / [cpu, 1e-6].max).ceil].min, false]
      end

      # Whether a batch about to run one after the other measures its jobs for #learn: every
      # LEARN_EVERY-th one (two clock reads per job), and each probe.
      def learning?
        @serial += 1
        if @probe
          @probe = false
          return true
        end
        (@serial % LEARN_EVERY).zero?
      end

      # From a batch run one after the other: {class name => [wait seconds, CPU seconds, jobs]}.
      def learn(sums)
        sums.each do |klass, (wait, cpu, count)|
          old = @waits[klass]
          now = if old.nil?
            [wait / count, cpu / count]
          else
            [fold(old[0], wait / count), fold(old[1], cpu / count)]
          end
          @waits[klass] = now
          if now[0] >= WAIT_MIN && now[0] >= OVERLAP_MIN * now[1]
            @waiting[klass] = now
          else
            @waiting.delete(klass)
          end
        end
      end

      private

      def fold(old, sample)
        return old + (ALPHA_DOWN * (sample - old)) if sample < old

        old + (ALPHA * ([sample, [old, FLOOR].max * SPIKE].min - old))
      end
    end
  end
end
