# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Boot: loads a Rails app the way `sidekiq` (the server) loads it.
    #
    # Duties (Sidekiq::CLI#boot_application, without CLI#run):
    # 1. Require sidekiq and sidekiq/cli BEFORE the app, so that `Sidekiq.server?` is true
    #    and the app's `Sidekiq.configure_server` blocks run: server middleware, error and
    #    death handlers, the Rails reloader (set in sidekiq/rails' after_initialize), the
    #    Rails logger broadcast to Sidekiq.logger.
    # 2. Set RAILS_ENV/RACK_ENV as the CLI does, require "rails" and "sidekiq/rails", then
    #    the app's config/environment.rb.
    # 3. Make the Sidekiq 8 ActiveJob wrapper name resolvable on older stacks: alias
    #    Sidekiq::ActiveJob::Wrapper to Rails' SidekiqAdapter::JobWrapper when it is missing.
    # 4. Take Sidekiq 7+'s own Metrics::Middleware (added by requiring sidekiq/cli) out of the
    #    server chain: the worker writes the job metrics (fastworker/job_metrics.py), and the
    #    middleware would only pile counts up in memory, or count every job twice if :beat fired.
    # Lifecycle events (:startup, :quiet, :shutdown, :heartbeat) are not fired here: they follow
    # the worker's POST /lifecycle (Lifecycle).
    class Boot
      def self.environment(explicit = nil)
        explicit || ENV["APP_ENV"] || ENV["RAILS_ENV"] || ENV["RACK_ENV"] || "development"
      end

      def self.sidekiq_server!
        require "sidekiq"
        require "sidekiq/cli"
      end

      def self.boot!(rails_root, environment: nil)
        sidekiq_server!
        env = self.environment(environment)
        ENV["RACK_ENV"] = ENV["RAILS_ENV"] = env
        environment_rb = File.expand_path("config/environment.rb", rails_root)
        raise ArgumentError, "no Rails app at #{rails_root} (#{environment_rb} is missing)" unless File.file?(environment_rb)

        require "rails"
        require "sidekiq/rails"
        require environment_rb
        alias_active_job_wrapper!
        drop_metrics_middleware!
        ::Rails.application
      end

      def self.drop_metrics_middleware!
        return unless defined?(::Sidekiq::Metrics::Middleware)

        Compat.server_middleware.remove(::Sidekiq::Metrics::Middleware)
      end

      def self.active_job_wrapper
        ::ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper
      rescue NameError
        nil
      end

      def self.alias_active_job_wrapper!
        return unless defined?(::ActiveJob::QueueAdapters)

        wrapper = active_job_wrapper
        return unless wrapper

        ::Sidekiq.const_set(:ActiveJob, Module.new) unless ::Sidekiq.const_defined?(:ActiveJob, false)
        ::Sidekiq::ActiveJob.const_set(:Wrapper, wrapper) unless ::Sidekiq::ActiveJob.const_defined?(:Wrapper, false)
      end
    end
  end
end
