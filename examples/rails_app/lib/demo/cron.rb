# frozen_string_literal: true

module Demo
  # A sidekiq-cron-like scheduler that lives on Sidekiq's lifecycle events: started on
  # :startup, stopped on :shutdown. Every DEMO_CRON_EVERY seconds it enqueues
  # PlainWorker("cron", n) with the Sidekiq client. Off unless DEMO_CRON_EVERY is set.
  # Every lifecycle event is also appended to DEMO_LIFECYCLE_LOG when set (one name per line).
  module Cron
    module_function

    def record(event)
      path = ENV["DEMO_LIFECYCLE_LOG"]
      File.open(path, "a") { |f| f.puts("#{event} #{Process.pid}") } if path && !path.empty?
    end

    def start
      every = ENV["DEMO_CRON_EVERY"].to_f
      return unless every.positive?

      @stop = false
      @thread = Thread.new do
        n = 0
        until @stop
          n += 1
          Sidekiq::Client.push("class" => "PlainWorker", "args" => ["cron", n])
          sleep every
        end
      end
    end

    def stop
      @stop = true
      @thread&.join(2)
    end
  end
end
