# frozen_string_literal: true

require_relative "../../lib/demo/cron"

# Lifecycle events, as sidekiq-cron and friends use them: the Sidekiq server (and the
# fastworker sidecar) fires them.
Sidekiq.configure_server do |config|
  config.on(:startup) do
    Demo::Cron.record("startup")
    Demo::Cron.start
  end
  config.on(:quiet) { Demo::Cron.record("quiet") }
  config.on(:shutdown) do
    Demo::Cron.stop
    Demo::Cron.record("shutdown")
  end
  config.on(:heartbeat) { Demo::Cron.record("heartbeat") }
end
