# frozen_string_literal: true

require "sidekiq"

module Fastworker
  module Sidecar
    # Compat: the one place that knows how Sidekiq's server-side API differs between
    # 6.x (module-level `Sidekiq.options`, `Sidekiq.server_middleware`, ...) and
    # 7.x/8.x (`Sidekiq.default_configuration`). Everything else asks this module.
    #
    # Duties:
    # 1. Find the reloader, the server and client middleware chains, the death handlers, the
    #    logger, and the enqueued_at format.
    # 2. Call the error handlers the way the installed Sidekiq does (`handle_exception`).
    # 3. Build the job logger (the app's `job_logger` option, else Sidekiq::JobLogger) for the
    #    installed version (its constructor changed in 7.x).
    # 4. Constantize class names the way Sidekiq's processor does.
    # 5. Find a retry hook block (`sidekiq_retry_in` / `sidekiq_retries_exhausted`) on the
    #    `wrapped` class first, then on the job class (Sidekiq 7.1.3+ lookup order).
    # 6. Recognise Sidekiq::Shutdown anywhere in an exception's cause chain.
    # 7. Say which per-job steps the installed version has (`_context=`, 7.3+).
    # 8. Fire a lifecycle event's blocks (`config.on(...)`), as Sidekiq's fire_event does.
    module Compat
      PASS_THROUGH = proc { |&block| block.call }

      module_function

      # Sidekiq 7+: the default Sidekiq::Config; nil on 6.x.
      def config
        ::Sidekiq.respond_to?(:default_configuration) ? ::Sidekiq.default_configuration : nil
      end

      def option(key)
        cfg = config
        cfg ? cfg[key] : ::Sidekiq.options[key]
      end

      # The Rails reloader the app's `configure_server` installed (Sidekiq::Rails::Reloader
      # in a Rails app), else a pass-through proc, as in Sidekiq's Processor.
      def reloader
        option(:reloader) || PASS_THROUGH
      end

      def server_middleware
        cfg = config
        cfg ? cfg.server_middleware : ::Sidekiq.server_middleware
      end

      def client_middleware
        cfg = config
        cfg ? cfg.client_middleware : ::Sidekiq.client_middleware
      end

      # What raw_push writes as enqueued_at: integer ms since the epoch on 8.x, float seconds before.
      def enqueued_at_now
        if Gem::Version.new(::Sidekiq::VERSION) >= Gem::Version.new("8")
          ::Process.clock_gettime(::Process::CLOCK_REALTIME, :millisecond)
        else
          ::Time.now.to_f
        end
      end

      def death_handlers
        cfg = config
        cfg ? cfg.death_handlers : ::Sidekiq.death_handlers
      end

      def logger
        ::Sidekiq.logger
      end

      # The blocks the app registered with `config.on(event)` (6.x: Sidekiq.options, 7.x+:
      # the default configuration), called as fire_event calls them: in order (reverse for
      # :quiet and :shutdown), each block's error to the error handlers, the others still run.
      # An event this Sidekiq does not know (6.x has no :beat) has no blocks.
      def fire_event(event, reverse: false)
        blocks = Array((option(:lifecycle_events) || {})[event]).dup
        blocks.reverse! if reverse
        blocks.each do |block|
          block.call
        rescue => e
          handle_exception(e, {context: "Exception during Sidekiq lifecycle event.", event: event})
        end
        blocks.size
      end

      # The app's own `job_logger` (6.x `Sidekiq.options[:job_logger]`, 7.x+ `config[:job_logger]`)
      # or Sidekiq::JobLogger, built as the installed Processor builds it: 6.x `.new` with no
      # argument, 7.x+ `.new(config)` (7.0's JobLogger took the logger).
      def job_logger
        klass = option(:job_logger) || ::Sidekiq::JobLogger
        return klass.new unless config

        first = ::Sidekiq::JobLogger.instance_method(:initialize).parameters.first
        (first && first[1] == :config) ? klass.new(config) : klass.new(logger)
      end

      # Tell Sidekiq's error handlers (Sentry, Honeybadger, the default logger handler).
      # A handler that raises is logged and the others still run.
      def handle_exception(exception, context)
        cfg = config
        if cfg.respond_to?(:handle_exception)
          cfg.handle_exception(exception, context)
        else
          ::Sidekiq.error_handlers.each do |handler|
            handler.call(exception, context)
          rescue => handler_error
            logger.error "!!! ERROR HANDLER THREW AN ERROR !!!"
            logger.error handler_error
            logger.error handler_error.backtrace.join("\n") unless handler_error.backtrace.nil?
          end
        end
      end

      # Segment-by-segment `const_get(name, false)`, as Sidekiq 6.4.1's Processor#constantize.
      # An unknown constant raises NameError "uninitialized constant X" without Ruby 3.1's
      # error_highlight snippet, which would quote the sidecar's own source in error_message.
      def constantize(name)
        return Object.const_get(name) unless name.include?("::")

        names = name.split("::")
        names.shift if names.empty? || names.first.empty?
        names.inject(Object) { |scope, segment| scope.const_get(segment, false) }
      rescue NameError => e
        raise if e.is_a?(NoMethodError) || !e.respond_to?(:original_message)

        # A backtrace of strings (no locations) keeps error_highlight from adding a snippet.
        raise NameError.new(e.original_message, e.name), e.original_message, e.backtrace
      end

      # The class named by the job's `wrapped`, or nil when absent or unknown.
      def wrapped_class(job)
        name = job["wrapped"]
        return nil unless name.is_a?(String) && !name.empty?

        constantize(name)
      rescue NameError
        nil
      end

      # A hook block (attr is :sidekiq_retry_in_block or :sidekiq_retries_exhausted_block):
      # from the wrapped class when it defines one, else from the job class.
      def hook_block(job, job_class, attr)
        wrapped = wrapped_class(job)
        block = wrapped.public_send(attr) if wrapped.respond_to?(attr)
        return block if block
        return nil unless job_class.respond_to?(attr)

        job_class.public_send(attr)
      end

      def shutdown?(exception, seen = {}.compare_by_identity)
        return false if exception.nil? || seen[exception]
        return true if exception.is_a?(::Sidekiq::Shutdown)

        seen[exception] = true
        shutdown?(exception.cause, seen)
      end

      # Sidekiq 7.3+ hands the job its processor as `_context` (for IterableJob's
      # `stopping?`); older versions never call `_context=`.
      def context_setter?
        Gem::Version.new(::Sidekiq::VERSION) >= Gem::Version.new("7.3")
      end

      # Sidekiq 7.3+ IterableJob interruption: acked, neither an error nor logged.
      def skip?(exception)
        defined?(::Sidekiq::JobRetry::Skip) && exception.is_a?(::Sidekiq::JobRetry::Skip) &&
          ::Sidekiq::VERSION >= "7.3"
      end

      # Run hook code (error/death handlers outside a job) inside the Rails executor when
      # there is one, so that an ActiveRecord connection a handler checks out goes back to
      # the pool instead of staying pinned to a Puma thread.
      def with_app_executor(&block)
        app = defined?(::Rails) && ::Rails.respond_to?(:application) && ::Rails.application
        if app.respond_to?(:executor) && !app.executor.active?
          app.executor.wrap(&block)
        else
          yield
        end
      end
    end
  end
end
