# frozen_string_literal: true

require_relative "helper"

# A batch of jobs that mostly wait runs them at the same time (JobWaits decides, JobThreads
# runs), each still its own unit of work with its own outcome, in order; a batch of jobs that
# compute runs them one after the other on the request's thread, as before.
class WaitingBatchTest < Minitest::Test
  include SidecarTestHelpers

  def batch(payloads)
    raws = payloads.map { |p| JSON.generate(p) }
    keys = payloads.map { |p| p["jid"] }.join(",")
    env = {method: "POST", input: raws.join("\n"), "CONTENT_TYPE" => "application/x-ndjson", "HTTP_IDEMPOTENCY_KEYS" => keys}
    env.merge!(signature("POST", "/perform_batch", env[:input], keys))
    response = Rack::MockRequest.new(@app).request("POST", "/perform_batch", env)
    [response.status, parse(response.body), response.headers]
  end

  def waits(count, seconds)
    Array.new(count) { job("WaitJob", [seconds]) }
  end

  # Four jobs of one batch running at once (the slots: capacity 4), within a second.
  def four_running
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 1.0
    sleep 0.005 until @drain.in_flight == 4 || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    assert_equal 4, @drain.in_flight, "the batch's jobs did not run at once"
  end

  # Batches one after the other until the app has learned that WaitJob waits.
  def taught
    Fastworker::Sidecar::JobWaits::LEARN_EVERY.times { batch(waits(2, 0.02)) }
    Recorder.reset!
  end

  def test_jobs_that_wait_run_at_the_same_time_once_their_class_is_known
    status, first, = batch(waits(4, 0.05))
    assert_equal 1, Recorder[:wait].map { |w| w["thread"] }.uniq.size, "a class not yet seen runs one after the other"
    assert_equal [200, %w[done] * 4], [status, first.map { |i| i["status"] }]
    taught

    jobs = waits(4, 0.05)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    status, items, headers = batch(jobs)
    took = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
    assert_equal [200, %w[done] * 4, jobs.map { |j| j["jid"] }], [status, items.map { |i| i["status"] }, items.map { |i| i["jid"] }]
    assert_equal 4, Recorder[:wait].map { |w| w["thread"] }.uniq.size
    assert_operator took, :<, 0.15, "four waits of 50 ms one after the other take 200 ms"
    assert_in_delta took * 1000, Float(headers["x-fastworker-ran-ms"]), 30
    assert_equal "1", headers["x-fastworker-waiting"], "the worker keeps such jobs in one request"
    assert_equal 4 + 4 + (2 * Fastworker::Sidecar::JobWaits::LEARN_EVERY), @app.metrics.count("perform_batch", "done")
    assert_equal 0, @drain.in_flight
  end

  # Wall time minus CPU time is waiting only if the job blocked: on a busy machine it also holds
  # the moments the OS ran another process. A job that never gave up its thread waited for
  # nothing, so its class stays one after the other.
  def test_a_job_that_never_blocked_teaches_no_wait
    switches = Fastworker::Sidecar::ThreadUsage.singleton_class
    switches.alias_method(:real_voluntary_switches, :voluntary_switches)
    switches.define_method(:voluntary_switches) { 7 } # as if none of the sleeps gave up the thread
    taught
    _, items, headers = batch(waits(4, 0.02))
    assert_equal(%w[done] * 4, items.map { |i| i["status"] })
    assert_equal 0.0, @app.instance_variable_get(:@waits).of("WaitJob")[0]
    assert_equal 1, Recorder[:wait].map { |w| w["thread"] }.uniq.size, "one after the other"
    assert_nil headers["x-fastworker-waiting"]
  ensure
    switches.alias_method(:voluntary_switches, :real_voluntary_switches)
    switches.remove_method(:real_voluntary_switches)
  end

  def test_jobs_that_compute_stay_on_the_request_thread
    3.times { batch(Array.new(4) { job("ContextJob") }) }
    _, items, headers = batch(Array.new(4) { job("ContextJob") })
    assert_equal(%w[done] * 4, items.map { |i| i["status"] })
    refute_nil headers["x-fastworker-ran-ms"], "a batch always says how long it ran"
    assert_nil headers["x-fastworker-waiting"], "computing jobs keep the worker's pipelined lanes"
    assert_nil @app.instance_variable_get(:@threads).instance_variable_get(:@queue), "no helper thread was started"
  end

  def test_cancelling_one_job_leaves_the_jobs_not_yet_started_unattempted
    taught
    jobs = waits(6, 0.3) # 4 job slots: 4 run, 2 wait for a thread
    runner = Thread.new { batch(jobs) }
    four_running
    answer = @drain.cancel([jobs[0]["jid"]], 1.0)
    assert_equal [jobs[0]["jid"]], answer["stopped"]
    _, items, = runner.value
    assert_equal(%w[shutdown done done done unavailable unavailable], items.map { |i| i["status"] })
    assert_equal(%w[cancelled cancelled], items[4..].map { |i| i["reason"] })
    assert_equal 0, @drain.in_flight
    _, after, = batch(waits(2, 0.01))
    assert_equal(%w[done done], after.map { |i| i["status"] }, "the threads that ran it take jobs again")
  end

  def test_a_hard_stop_after_a_drain_stops_the_running_jobs_and_leaves_the_rest
    taught
    runner = Thread.new { batch(waits(6, 5)) }
    four_running
    @drain.begin_drain!
    assert_equal 4, @drain.interrupt_running(Sidekiq::Shutdown)
    _, items, = runner.value
    assert_equal((%w[shutdown] * 4) + (%w[unavailable] * 2), items.map { |i| i["status"] })
    assert_equal 0, @drain.in_flight
  end

  def test_a_batch_runs_on_the_slots_left_instead_of_refusing_a_job
    taught
    other = Thread.new { batch([job("WaitJob", [0.4])]) } # another request holds one of the 4 slots
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 1.0
    sleep 0.005 until @drain.in_flight == 1 || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    jobs = waits(4, 0.05)
    status, items, = batch(jobs)
    assert_equal [200, %w[done] * 4], [status, items.map { |i| i["status"] }], "no job of the batch refused at capacity"
    ran = Recorder[:wait].select { |w| jobs.any? { |j| j["jid"] == w["jid"] } }
    assert_equal 3, ran.map { |w| w["thread"] }.uniq.size, "the batch ran on the 3 slots left"
    assert_equal [%w[done]], [other.value[1].map { |i| i["status"] }]
    assert_equal 0, @drain.in_flight
  end

  def test_a_bad_line_in_a_waiting_batch_is_its_own_answer
    taught
    raws = [JSON.generate(job("WaitJob", [0.01])), "{not json", JSON.generate(job("WaitJob", [0.01]))]
    env = {method: "POST", input: raws.join("\n"), "CONTENT_TYPE" => "application/x-ndjson"}
    env.merge!(signature("POST", "/perform_batch", env[:input], ""))
    items = parse(Rack::MockRequest.new(@app).request("POST", "/perform_batch", env).body)
    assert_equal(%w[done bad_request done], items.map { |i| i["status"] })
  end
end

# The decision alone.
class JobWaitsTest < Minitest::Test
  W = Fastworker::Sidecar::JobWaits

  def test_waiting_classes_share_threads_and_computing_ones_do_not
    waits = W.new
    assert_equal [1, false], waits.plan(jobs(%w[Io Io])), "nothing learned yet"
    waits.learn("Io" => [800e-6, 200e-6, 4], "Cpu" => [240e-6, 1200e-6, 4], "Tiny" => [40e-6, 0.0, 4])
    assert_equal [1, false], waits.plan(jobs(%w[Cpu Cpu Cpu Cpu])), "waiting less than computing: preemption, not I/O"
    assert_equal [1, false], waits.plan(jobs(%w[Tiny] * 10)), "under WAIT_MIN per job"
    assert_equal [1, false], waits.plan(jobs(%w[Unknown Unknown])), "not yet seen"
    assert_equal [1, false], waits.plan(jobs(%w[Io])), "one job: nothing to overlap it with"
    waits.learn("Quick" => [256e-6, 452e-6, 4]) # one Redis call each: waits about half what it computes
    assert_equal [2, false], waits.plan(jobs(%w[Quick] * 4)),
                 "a second thread overlaps the waits; not waiting, so the worker keeps pipelining"
    assert_equal [2, true], waits.plan(jobs(%w[Io Io])), "jobs that wait as long as they compute: one thread each"
    assert_equal [7, true], waits.plan(jobs(%w[Io Io Io Io Io Io Cpu])), "all their waits overlap"
    waits.learn("Half" => [300e-6, 400e-6, 4])
    assert_equal [2, false], waits.plan(jobs(%w[Half] * 6)), "waiting less: 1 + wait / CPU threads, a hand-over each"
    assert_equal [4, true], waits.plan([{"class" => "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped" => "Io"}] * 4),
      "an ActiveJob is known by the class it wraps"
    waits.learn("Io" => [4e-6, 800e-6, 4]) until waits.of("Io")[0] < W::WAIT_MIN
    assert_equal [1, false], waits.plan(jobs(%w[Io Io])), "a class that stopped waiting runs one after the other again"
  end

  def test_every_probe_th_batch_runs_one_after_the_other_to_learn_again
    waits = W.new
    waits.learn("Io" => [200e-6, 50e-6, 1])
    runs = Array.new(W::PROBE * 4) { waits.plan(jobs(%w[Io Io Io])) }
    probes = runs.each_index.select { |i| runs[i] == [1, true] }
    assert_equal [7, 23, 55, 87, 119], probes, "a probe runs serial and still says its jobs wait: after 8 and 16 batches, then every PROBE-th"
    assert_equal [true], runs.map(&:last).uniq
    assert_equal [1, false], waits.plan(jobs(%w[Cpu Cpu])), "jobs not known to wait"
    waits.learn("Quick" => [64e-6, 113e-6, 1])
    quick = Array.new(W::PROBE) { waits.plan(jobs(%w[Quick] * 4)) }
    assert_includes quick, [1, false], "a probe of jobs that wait less than they compute"
    assert_equal [false], quick.map(&:last).uniq, "never said to wait: the worker keeps pipelining them"
    assert waits.learning?, "a probe batch measures its jobs"
    learned = Array.new(W::LEARN_EVERY * 3) { waits.learning? }
    assert_equal 3, learned.count(true), "other batches one in LEARN_EVERY"
  end

  def jobs(classes)
    classes.map { |c| {"class" => c} }
  end

  # The first figures of a class may be a cold run's. Batches run together teach nothing but
  # their probes, so a class whose first sample made it look CPU-bound must still reach one
  # thread per job soon: here within a quarter of tests/test_waiting_jobs.py's 160 batches.
  def test_a_cold_first_sample_is_outgrown
    waits = W.new
    learned = 0
    plans = Array.new(40) do
      plan = waits.plan(jobs(%w[Io] * 5))
      if plan.first == 1 && waits.learning?
        cpu = learned.zero? ? 1e-3 : 60e-6
        learned += 1
        waits.learn("Io" => [5 * 300e-6, 5 * cpu, 5])
      end
      plan
    end
    assert_equal [5, true], plans.last, "a class that waits 5 times what it computes, after a cold first batch"
  end

  def test_averages_move_and_a_spike_counts_little
    waits = W.new
    waits.learn("A" => [100e-6, 100e-6, 1])
    waits.learn("A" => [10.0, 100e-6, 1]) # a GC pause or a preemption of 10 s
    assert_in_delta 100e-6 + (W::ALPHA * 300e-6), waits.of("A")[0], 1e-9
    waits.learn("A" => [100e-6, 20e-6, 1])
    assert_in_delta 100e-6 + (W::ALPHA * 300e-6) - (W::ALPHA_DOWN * W::ALPHA * 300e-6), waits.of("A")[0], 1e-9
    assert_in_delta 100e-6 - (W::ALPHA_DOWN * 80e-6), waits.of("A")[1], 1e-9, "a lower figure counts more"
  end
end

class ThreadUsageTest < Minitest::Test
  def test_a_thread_that_blocks_counts_a_voluntary_switch_and_one_that_computes_none
    usage = Fastworker::Sidecar::ThreadUsage
    skip "getrusage(RUSAGE_THREAD) is Linux's" unless RUBY_PLATFORM.include?("linux")
    Thread.new do
      before = usage.voluntary_switches
      sleep 0.001
      slept = usage.voluntary_switches
      x = 0
      20_000.times { x += 1 }
      assert_operator slept, :>, before, "a sleep gives up the thread"
      assert_equal slept, usage.voluntary_switches, "a loop does not"
    end.join
  end
end

class JobThreadsTest < Minitest::Test
  def test_every_index_once_over_several_threads
    threads = Fastworker::Sidecar::JobThreads.new(4)
    seen = Queue.new
    left = threads.each(20) do |i, _|
      sleep 0.002
      seen << [i, Thread.current.object_id]
    end
    got = Array.new(seen.size) { seen.pop }
    assert_empty left
    assert_equal (0...20).to_a, got.map(&:first).sort
    assert_equal 4, got.map(&:last).uniq.size
  end

  def test_an_index_handed_back_busy_goes_to_a_thread_that_stays
    threads = Fastworker::Sidecar::JobThreads.new(3)
    tries = Hash.new(0)
    lock = Mutex.new
    running = Queue.new
    left = threads.each(6, 3) do |i, _|
      first = lock.synchronize { (tries[i] += 1) == 1 }
      if i.zero? && first
        running.pop # another thread runs one: 0 comes back busy while it does
        Fastworker::Sidecar::JobThreads::BUSY
      else
        running << i
        sleep 0.05
        nil
      end
    end
    assert_empty left
    assert_equal({0 => 2, 1 => 1, 2 => 1, 3 => 1, 4 => 1, 5 => 1}, tries)
    alone = Hash.new(0)
    assert_empty threads.each(3, 1) { |i, _| alone[i] += 1 and Fastworker::Sidecar::JobThreads::BUSY }
    assert_equal({0 => 1, 1 => 1, 2 => 1}, alone, "the last thread's busy stands")
  end

  def test_stop_leaves_the_rest_and_a_raising_block_leaves_the_helpers_alive
    threads = Fastworker::Sidecar::JobThreads.new(2)
    left = threads.each(10, 1) { |i, round| round.stop! if i == 3 }
    assert_equal (4...10).to_a, left
    assert_raises(RuntimeError) { threads.each(2) { |i, _| raise "boom" if i.zero? } }
    ran = Queue.new
    assert_empty threads.each(4) { |i, _| ran << i }
    assert_equal 4, ran.size
  end
end
