# frozen_string_literal: true

module Fastworker
  module Sidecar
    # PumaDrain: makes Puma's stop drain the sidecar first.
    #
    # Duties:
    # 1. Hook Puma::Server#stop, which both Puma's single-mode TERM/INT handler and a
    #    cluster worker's TERM handler call (from signal-trap context).
    # 2. On the first stop: mark the Drain draining (new /perform → 503, /health → 503) while
    #    the listener stays open, and on a separate thread wait for in-flight jobs (up to
    #    Sidecar.drain_timeout, then Sidekiq::Shutdown in the stragglers), then let Puma stop.
    #    Before waiting, fire the app's :quiet and :shutdown lifecycle events (Lifecycle).
    # 3. Any later stop (Puma calls it again while exiting) goes straight to Puma.
    module PumaDrain
      def self.install!
        require "puma/server"
        ::Puma::Server.prepend(ServerHook) unless ::Puma::Server.ancestors.include?(ServerHook)
      end

      module ServerHook
        def stop(sync = false)
          drain = Fastworker::Sidecar.drain
          return super if drain.nil? || @fastworker_drain_started

          @fastworker_drain_started = true
          drain.begin_drain! # trap-safe: a plain assignment
          Thread.new do
            lifecycle = Fastworker::Sidecar.lifecycle
            lifecycle&.stopping! # :quiet and :shutdown before waiting, as Sidekiq's Manager#stop
            drain.drain(Fastworker::Sidecar.drain_timeout)
            super(false)
          end
          nil
        end
      end
    end
  end
end
