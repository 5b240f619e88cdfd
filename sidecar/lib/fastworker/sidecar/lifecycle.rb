# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Lifecycle: fires Sidekiq's lifecycle events (`config.on(:startup)` and friends) in the
    # sidecar, as the Sidekiq server fires them, driven by the workers it serves.
    #
    # Duties:
    # 1. Track the workers that talk to this sidecar process by identity, from POST /lifecycle
    #    {"event": "startup"|"quiet"|"shutdown"|"beat", "identity": ..., "timeout": seconds,
    #    "quiet": bool}.
    #    A worker not heard from for WORKER_TTL seconds (killed without a goodbye) is forgotten.
    # 2. Fire, in one cycle:
    #    :startup  once the app is booted and the first worker is connected (any event from an
    #              unknown worker registers it: a sidecar restarted under a running worker
    #              still fires it on that worker's next beat);
    #    :quiet    once every known worker is quiet (TSTP, the Web UI's Quiet, the start of TERM);
    #    :shutdown once the last worker stops, or when the sidecar itself is stopped (TERM);
    #    :heartbeat on the first beat of the cycle (Sidekiq fires it on its first beat only),
    #    :beat (7.x) on every beat, at most once per BEAT_MIN seconds however many workers beat.
    #    After :shutdown a worker that starts begins a new cycle (the sidecar outlived a
    #    worker restart: the app's :startup code runs again, as in a restarted Sidekiq).
    # 3. Fire each event the way Sidekiq's fire_event does: :quiet and :shutdown blocks in
    #    reverse order, each block's error reported to the error handlers and the others still
    #    run. The blocks are not cleared (Sidekiq clears them because its process ends with
    #    the cycle; the sidecar may see another cycle).
    # 4. Follow the workers' --timeout: the drain timeout becomes the largest timeout the live
    #    workers announced, unless --drain-timeout / FASTWORKER_SIDECAR_DRAIN_TIMEOUT set it.
    #    Sidekiq's own options (:timeout, :concurrency, :max_retries) become the largest the live
    #    workers announced, so the app's Ruby code reads what the server runs with
    #    (ServerConfig.follow_workers).
    #    In a Puma cluster the lifecycle events reach one process (the worker's /lifecycle
    #    connection); the others get {"event": "settings", ...} from each worker on each beat
    #    (and "gone": true when it stops), which only feeds this duty: no worker is registered
    #    and nothing fires.
    # 5. Offer `stopping?` for IterableJob's `_context.stopping?` (quiet or stopping).
    class Lifecycle
      WORKER_TTL = 60
      BEAT_MIN = 1.0
      EVENTS = %w[startup quiet shutdown beat settings].freeze
      SETTINGS = %w[concurrency max_retries].freeze # whole numbers a worker announces with each event

      Worker = Struct.new(:quiet, :timeout, :seen, :settings)

      attr_reader :fired

      def initialize(drain, clock: -> { Process.clock_gettime(Process::CLOCK_MONOTONIC) })
        @drain = drain
        drain.lifecycle = self
        @clock = clock
        @lock = Mutex.new
        @workers = {}
        @announced = {} # identity => Worker: settings heard from workers whose events go elsewhere
        @fired = [] # events fired, in order (for /health and the tests)
        new_cycle
      end

      # A worker's event; returns what /lifecycle answers.
      # `quiet`: the worker says it is quiet (its beats carry it, so a restarted sidecar learns it).
      def call(event, identity, timeout: nil, quiet: false, settings: {}, gone: false)
        raise ArgumentError, "unknown event #{event.inspect}" unless EVENTS.include?(event)
        raise ArgumentError, "identity must be a non-empty string" unless identity.is_a?(String) && !identity.empty?

        @lock.synchronize do
          forget_silent
          next announce(identity, timeout, settings, gone: gone) if event == "settings"

          # a goodbye from a worker we do not know (sent twice, or before our restart): nothing to do
          next answer(event) if event == "shutdown" && !@workers.key?(identity)

          worker = register(identity, timeout)
          worker.settings = whole_settings(settings)
          worker.quiet = true if quiet == true
          case event
          when "quiet" then worker.quiet = true
          when "shutdown"
            worker.quiet = true
            @workers.delete(identity)
          when "beat" then beat
          end
          fire_once(:quiet) if @startup_fired && !@workers.empty? && @workers.each_value.all?(&:quiet)
          if event == "shutdown" && @workers.empty? && @startup_fired
            fire_once(:quiet)
            fire_once(:shutdown)
            new_cycle
          end
          follow_workers
          answer(event)
        end
      end

      # The sidecar itself stops (Puma TERM): quiet and shutdown now, before its jobs drain,
      # as Sidekiq's Manager#stop fires them before waiting.
      def stopping!
        @lock.synchronize do
          @stopping = true
          next unless @startup_fired

          fire_once(:quiet)
          fire_once(:shutdown)
        end
      end

      # IterableJob (7.3+): true once the workers quiet or the sidecar stops.
      def stopping?
        @stopping || @quiet_fired || @drain.draining?
      end

      def workers
        @lock.synchronize { @workers.size }
      end

      private

      def new_cycle
        @startup_fired = false
        @quiet_fired = false
        @shutdown_fired = false
        @heartbeat_fired = false
        @last_beat = nil
        @stopping = false
      end

      def register(identity, timeout)
        worker = @workers[identity]
        unless worker
          worker = @workers[identity] = Worker.new(false, nil, nil, {})
          new_cycle if @shutdown_fired
          unless @startup_fired
            @startup_fired = true
            fire(:startup)
          end
        end
        seen(worker, timeout)
      end

      # `gone`: the worker stopped (its goodbye went to the process its events reach)
      def announce(identity, timeout, settings, gone: false)
        if gone
          @announced.delete(identity)
        else
          worker = seen(@announced[identity] ||= Worker.new(false, nil, nil, {}), timeout)
          worker.settings = whole_settings(settings)
        end
        follow_workers
        answer("settings")
      end

      def answer(event)
        {"status" => "ok", "event" => event, "workers" => @workers.size, "fired" => @fired.last(10)}
      end

      # the worker was just heard from, with the timeout it announced
      def seen(worker, timeout)
        worker.seen = @clock.call
        worker.timeout = Float(timeout) if timeout.is_a?(Numeric) && timeout >= 0
        worker
      end

      def whole_settings(settings)
        settings.select { |k, v| SETTINGS.include?(k) && v.is_a?(Integer) && v >= 0 }
      end

      def beat
        unless @heartbeat_fired
          @heartbeat_fired = true
          fire(:heartbeat)
        end
        now = @clock.call
        return if @last_beat && now - @last_beat < BEAT_MIN

        @last_beat = now
        fire(:beat)
      end

      def forget_silent
        now = @clock.call
        @workers.delete_if { |_, w| now - w.seen > WORKER_TTL }
        @announced.delete_if { |id, w| @workers.key?(id) || now - w.seen > WORKER_TTL }
      end

      def follow_workers
        live = @workers.values + @announced.values
        return if live.empty?

        timeouts = live.map(&:timeout).compact
        Sidecar.follow_worker_timeout(timeouts.max) unless timeouts.empty?
        largest = SETTINGS.to_h { |k| [k.to_sym, live.map { |w| w.settings[k] }.compact.max] }
        ServerConfig.follow_workers(timeout: timeouts.max, **largest)
      end

      def fire_once(event)
        flag = :"@#{event}_fired"
        return if instance_variable_get(flag)

        instance_variable_set(flag, true)
        fire(event)
      end

      def fire(event)
        @fired << event.to_s
        @fired.shift while @fired.size > 100
        Compat.fire_event(event, reverse: %i[quiet shutdown].include?(event))
      end
    end
  end
end
