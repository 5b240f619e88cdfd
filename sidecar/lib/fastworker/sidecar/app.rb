# frozen_string_literal: true

module Fastworker
  module Sidecar
    # App: the Rack application speaking the sidecar protocol (design.md, version 1).
    #
    # Duties:
    # 1. Route: POST /perform, POST /perform_batch, POST /exhausted, GET /health, GET /metrics;
    #    404/405 otherwise.
    # 2. /perform: parse (400 when the body is not a job), hand over to the Executor, which
    #    admits it through the Drain (503 when booting, draining or at capacity) and runs it
    #    (200 / 422 / 503).
    # 3. /exhausted: parse, run the Exhausted hooks of the phase asked (the block, the death
    #    handlers, or both), 200 (503 only while booting).
    # 3a. /cancel {"jids": [...], "grace": s}: stop those running jobs with Sidekiq::Shutdown
    #    (Drain#cancel), 200 with what stopped. /lifecycle {"event", "identity", "timeout"}: a
    #    worker's startup/quiet/shutdown/beat, which fires Sidekiq's lifecycle events (Lifecycle).
    # 3b. /invalid (the raw bytes of a job the worker could not decode, sent to the dead set):
    #    as Sidekiq's Processor#process, parse it with Sidekiq.load_json and give the parse error
    #    to the error handlers with {context: "Invalid JSON for job", jobstr:}; a body Ruby can
    #    parse (the worker refused it for another reason) reaches no handler.
    # 3c. /client_push {"jobs": [member, ...]}: due retry and schedule members through the app's
    #    client middleware (ClientPush), 200 with what to push for each; 503 while booting.
    # 4. /config: Sidekiq's resolved server configuration (ServerConfig) once booted, 503 before.
    # 4b. /health: 200 with versions, in-flight count, job slots per process, Puma worker
    #    count, batch limit, pipelining depth and whether the app has client middleware once
    #    booted, 503 otherwise.
    # 5. Observe every protocol request in Metrics; turn an internal error into a 500, which
    #    the worker treats like an unavailable sidecar (requeue, no retry spent).
    # 6. Tag every protocol answer and a signed /health with `x-fastworker-pid`, so the worker can tell
    #    which Puma worker process answered on a keep-alive connection (it identifies its
    #    connections with /health before the first jobs).
    # 7. Before any of that, the Door (size limit, signature): 413 / 401 and nothing runs.
    # The app is served outside the Rails middleware stack, so the reloader wraps each job once.
    class App
      TEXT_HEADERS = {"content-type" => "text/plain; version=0.0.4; charset=utf-8"}.freeze
      BATCH_LIMIT = Limits::MAX_BATCH

      PID_HEADER = "x-fastworker-pid"
      RAN_HEADER = "x-fastworker-ran-ms"
      WAITING_HEADER = "x-fastworker-waiting"

      attr_reader :drain, :metrics

      # workers: Puma worker processes serving this app (1 in single mode), for /health.
      CANCEL_GRACE = 3.0
      CANCEL_GRACE_MAX = 30.0

      attr_reader :lifecycle

      def initialize(drain:, workers: 1, metrics: Metrics.new(drain), executor: Executor.new(drain), exhausted: Exhausted.new,
        lifecycle: Lifecycle.new(drain), door: Door.from_env)
        @door = door
        @drain = drain
        @lifecycle = lifecycle
        Sidecar.lifecycle = lifecycle
        @workers = workers
        @metrics = metrics
        @executor = executor
        @exhausted = exhausted
        @waits = JobWaits.new
        @threads = JobThreads.new(drain.capacity)
      end

      def call(env)
        refusal = @door.call(env)
        return refusal if refusal

        case env["PATH_INFO"]
        when "/perform" then protocol(env, "perform") { perform(env) }
        when "/perform_batch" then protocol(env, "perform_batch", observe: false) { perform_batch(env) }
        when "/exhausted" then protocol(env, "exhausted") { exhausted(env) }
        when "/cancel" then protocol(env, "cancel") { cancel(env) }
        when "/lifecycle" then protocol(env, "lifecycle") { lifecycle_event(env) }
        when "/invalid" then protocol(env, "invalid") { invalid_job(env) }
        when "/client_push" then protocol(env, "client_push") { client_push(env) }
        when "/health" then get_only(env) { health_answer(env) }
        when "/config" then get_only(env) { server_config.to_rack }
        when "/metrics" then get_only(env) { [200, TEXT_HEADERS.dup, [@metrics.render]] }
        else Result.json(404, "not_found", {"error" => "not found"}).to_rack
        end
      end

      private

      def protocol(env, endpoint, observe: true)
        tag_pid(protocol_result(env, endpoint, observe) { yield }.to_rack)
      end

      # The pid only for a signed (or secretless) caller: to others /health says nothing about us.
      def health_answer(env)
        response = @door.health(env, health).to_rack
        env[Door::AUTHENTIC] ? tag_pid(response) : response
      end

      def tag_pid(response)
        response[1][PID_HEADER] = Process.pid.to_s # read per answer: cluster workers fork after App.new
        response
      end

      def protocol_result(env, endpoint, observe)
        return Result.json(405, "method_not_allowed", {"error" => "use POST"}) unless env["REQUEST_METHOD"] == "POST"

        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        result = begin
          yield
        rescue Payload::Invalid => e
          Result.bad_request(e.message)
        rescue => e
          Compat.logger.error("fastworker-sidecar: internal error on /#{endpoint}: #{e.class}: #{e.message}")
          Result.json(500, "error", {"status" => "error", "error" => "#{e.class}: #{e.message}"[0, 1000]})
        end
        @metrics.observe(endpoint, result.outcome, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) if observe || result.status != 200
        result
      end

      def get_only(env)
        return Result.json(405, "method_not_allowed", {"error" => "use GET"}).to_rack unless %w[GET HEAD].include?(env["REQUEST_METHOD"])

        yield
      end

      def perform(env)
        raw = read_body(env)
        job = Payload.parse_job(raw)
        @executor.call(job, raw, idempotency_key: env["HTTP_IDEMPOTENCY_KEY"], socket: env["puma.socket"])
      end

      # Several jobs in one request (an extension the worker uses for sub-millisecond job
      # classes, offered through /health "batch": true): the raw jobs one per line, their
      # Idempotency-Keys comma-separated in the same order. Each job runs exactly as a
      # /perform would (its own admission, logging context, reloader, middleware): one after
      # the other on this thread, or, for jobs of classes that mostly wait (JobWaits), at the
      # same time on up to `capacity` threads (JobThreads). The answer is one result object
      # per job, in order: {"status":"done"|"failed"|"bad_request"|"unavailable"|"shutdown",
      # ...the /perform body}, and x-fastworker-ran-ms says how long the sidecar spent on them
      # (parsing, running and answering: jobs run at once overlap, so their runtimes do not
      # add up to it). A job not attempted (draining meanwhile) comes back
      # "unavailable" with its reason.
      def perform_batch(env)
        return Result.unavailable(@drain.state) unless @drain.ready?

        lines = read_body(env).split("\n").map(&:chomp)
        raise Payload::Invalid, "empty batch" if lines.empty?
        raise Payload::Invalid, "more than #{BATCH_LIMIT} jobs in one batch" if lines.size > BATCH_LIMIT

        keys = env["HTTP_IDEMPOTENCY_KEYS"].to_s.split(",")
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        text, waiting = run_batch(lines, keys, env["puma.socket"])
        ran_ms = ((Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) * 1000).round(3)
        headers = {RAN_HEADER => ran_ms.to_s}
        headers[WAITING_HEADER] = "1" if waiting
        Result.json_text(200, "done", text, headers)
      end

      # Each job's outcome and time go to a Tally folded into the metrics once. Returns the
      # answer's JSON text and whether JobWaits found the jobs waiting.
      def run_batch(lines, keys, socket)
        jobs = lines.map do |raw|
          Payload.parse_job(raw)
        rescue Payload::Invalid => e
          e
        end
        tally = Metrics::Tally.new
        threads, waiting = @waits.plan(jobs)
        results = if threads > 1
          together(jobs, lines, keys, socket, tally, threads)
        else
          one_by_one(jobs, lines, keys, socket, tally)
        end
        out = +"["
        results.each_with_index do |result, i|
          out << "," unless i.zero?
          result.write_batch_item(out)
        end
        out << "]"
        [out, waiting]
      ensure
        @metrics.record("perform_batch", tally) if tally
      end

      # One after the other on this thread; what each job waited teaches JobWaits (when it asks).
      # A job that never blocked (ThreadUsage) waited for nothing: the rest of its wall time was
      # the OS running another process.
      def one_by_one(jobs, lines, keys, socket, tally)
        waits = @waits.learning? ? {} : nil
        mark = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        results = []
        @executor.batch(socket: socket) do |runner|
          jobs.each_with_index do |job, i|
            if waits
              cpu = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
              switches = ThreadUsage.voluntary_switches
            end
            result = job.is_a?(Exception) ? Result.bad_request(job.message) : runner.call(job, lines[i], keys[i])
            now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
            tally.add(result.outcome, now - mark)
            if waits && result.outcome == "done"
              cpu = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) - cpu
              blocked = switches.nil? || ThreadUsage.voluntary_switches != switches
              sum = (waits[JobWaits.class_of(job)] ||= [0.0, 0.0, 0])
              sum[0] += (now - mark) - cpu if blocked
              sum[1] += cpu
              sum[2] += 1
            end
            mark = now
            results << result
          end
        end
        @waits.learn(waits) if waits
        results
      end

      # At the same time, on this thread and threads - 1 helpers; a job stopped by POST /cancel
      # or a closed connection leaves the jobs not yet started unattempted, as one after the
      # other would. A job that finds every slot taken (other requests hold them) waits for a
      # thread of its own batch instead of being refused, as it would one after the other: the
      # batch then runs on fewer threads.
      def together(jobs, lines, keys, socket, tally, threads)
        results = Array.new(jobs.size)
        times = Array.new(jobs.size, 0.0)
        left = @threads.each(jobs.size, threads) do |i, round|
          started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          job = jobs[i]
          if job.is_a?(Exception)
            results[i] = Result.bad_request(job.message)
          else
            results[i], cancelled = @executor.together_call(job, lines[i], keys[i], socket)
            round.stop! if cancelled
          end
          times[i] = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
          JobThreads::BUSY if results[i].at_capacity?
        end
        left.each { |i| results[i] = Result.unavailable(:cancelled, jobs[i].is_a?(Hash) ? jobs[i]["jid"] : nil) }
        @drain.request_done
        results.each_with_index { |result, i| tally.add(result.outcome, times[i]) }
        results
      end

      def exhausted(env)
        return Result.unavailable(:booting) if @drain.state == :booting

        job, error, run_block, phase = Payload.parse_exhausted(read_body(env))
        Result.json(200, "done", @exhausted.call(job, error, run_block: run_block, phase: phase))
      end

      # Answered in every state: a draining sidecar still stops the jobs it is told to.
      def cancel(env)
        body = Payload.parse_object(read_body(env), "body")
        jids = body["jids"]
        raise Payload::Invalid, "\"jids\" must be an array of strings" unless jids.is_a?(Array) && jids.all?(String)

        grace = body.fetch("grace", CANCEL_GRACE)
        raise Payload::Invalid, "\"grace\" must be a number of seconds" unless grace.is_a?(Numeric) && grace >= 0

        answer = @drain.cancel(jids, [grace.to_f, CANCEL_GRACE_MAX].min)
        Compat.logger.warn("fastworker-sidecar: cancelled by the worker: #{answer["stopped"].join(", ")}") unless answer["stopped"].empty?
        Result.json(200, "done", answer)
      end

      def invalid_job(env)
        return Result.unavailable(:booting) if @drain.state == :booting

        jobstr = read_body(env)
        begin
          ::Sidekiq.load_json(jobstr)
          reported = false
        rescue => e
          Compat.with_app_executor { Compat.handle_exception(e, {context: "Invalid JSON for job", jobstr: jobstr}) }
          reported = true
        end
        Result.json(200, "done", {"status" => "done", "reported" => reported})
      end

      # Due jobs through the app's client middleware, as Sidekiq's poller pushes them (ClientPush).
      def client_push(env)
        return Result.unavailable(:booting) if @drain.state == :booting

        members = Payload.parse_object(read_body(env), "body")["jobs"]
        raise Payload::Invalid, "\"jobs\" must be an array of strings" unless members.is_a?(Array) && members.all?(String)

        Result.json(200, "done", {"status" => "done", "jobs" => ClientPush.call(members)})
      end

      # 503 while booting: :startup fires only once the app is booted, and the worker retries.
      def lifecycle_event(env)
        return Result.unavailable(:booting) if @drain.state == :booting

        body = Payload.parse_object(read_body(env), "body")
        Result.json(200, "done", @lifecycle.call(body["event"], body["identity"], timeout: body["timeout"],
          quiet: body["quiet"] == true, settings: body.slice(*Lifecycle::SETTINGS), gone: body["gone"] == true))
      rescue ArgumentError => e
        Result.bad_request(e.message)
      end

      def health
        body = {"status" => @drain.ready? ? "ok" : @drain.state.to_s, "sidekiq" => ::Sidekiq::VERSION,
                "rails" => rails_version, "protocol" => PROTOCOL_VERSION, "in_flight" => @drain.in_flight,
                "capacity" => @drain.capacity, "workers" => @workers, "pid" => Process.pid, "batch" => true, "batch_max" => BATCH_LIMIT, "pipeline" => pipeline_depth,
                "cancel" => true, "lifecycle" => true, "client_middleware" => ClientPush.middleware?, "drain_timeout" => Sidecar.drain_timeout}
        Result.json(@drain.ready? ? 200 : 503, body["status"], body)
      end

      def server_config
        return Result.unavailable(@drain.state) unless @drain.ready? && defined?(ServerConfig)

        Result.json(200, "done", ServerConfig.snapshot)
      end

      # Requests the worker may pipeline on one connection (PumaPipelining); 1 outside Puma.
      def pipeline_depth
        defined?(PumaPipelining) ? PumaPipelining.depth : 1
      end

      def rails_version
        (defined?(::Rails) && ::Rails.respond_to?(:version)) ? ::Rails.version : nil
      end

      def read_body(env)
        return env[Door::BODY] if env.key?(Door::BODY) # read, bounded and verified by the Door
        input = env["rack.input"]
        return "" unless input

        input.rewind if input.respond_to?(:rewind)
        body = input.read || +""
        body.force_encoding(Encoding::UTF_8)
      end
    end
  end
end
