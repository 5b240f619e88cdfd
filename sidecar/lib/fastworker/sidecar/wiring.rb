# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Wiring: the sidecar's parts put together in one place, for both ways of serving it: the
    # fastworker-sidecar launcher (launcher.rb) and a team's own Puma or Rack server (config.ru).
    #
    # Duties:
    # 1. The Drain for `threads` job slots, known process-wide (Sidecar.drain).
    # 2. Under Puma: the drain on stop (PumaDrain) and pipelined requests (PumaPipelining: /health
    #    then offers "pipeline": 2). Another Rack server gets neither.
    # 3. The Rack App over them, told how many Puma workers serve it (for /health), with the door
    #    the environment's secret locks.
    # 4. Sidekiq's own configuration, before any app code runs (`configure!`: Sidekiq's CLI parser
    #    over `-r ROOT -e ENV -- <sidekiq args>`, finding config/sidekiq.yml as `sidekiq` does), so
    #    the app's configure_server blocks see it and GET /config answers what Sidekiq would run.
    # 5. The app booted as the Sidekiq server boots it, then jobs let in (`boot!`).
    module Wiring
      module_function

      # Raises ArgumentError as `sidekiq` would (a missing -C file, a queue given twice).
      def configure!(rails_root, environment, sidekiq_args = [])
        Boot.sidekiq_server!
        ServerConfig.setup!(ServerConfig.argv(rails_root, environment, sidekiq_args))
      end

      def boot!(drain, rails_root, environment)
        Boot.boot!(rails_root, environment: environment)
        ServerConfig.booted!
        drain.ready!
      end

      # [drain, app]
      def build(threads:, workers: 1, env: ENV)
        drain = Drain.new(capacity: threads)
        Sidecar.drain = drain
        if defined?(::Puma::Server)
          require "fastworker/sidecar/puma_drain"
          require "fastworker/sidecar/puma_pipelining"
          PumaDrain.install!
          PumaPipelining.install!
        end
        [drain, App.new(drain: drain, workers: [workers.to_i, 1].max, door: Door.from_env(env))]
      end
    end
  end
end
