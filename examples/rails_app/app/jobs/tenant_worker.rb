# frozen_string_literal: true

# An exception of the app's own, with an attribute and a cause: what error trackers read.
class TenantError < StandardError
  attr_reader :tenant

  def initialize(tenant)
    @tenant = tenant
    super("tenant #{tenant} is suspended")
  end
end

# Dead on its first failure (retry: 0). Its sidekiq_retries_exhausted block records what it was
# handed and whether the job is in the dead set yet: under Sidekiq, the block runs before the
# dead-set write and the death handlers after it, both with the job's own exception object.
# With "crash-once", the block's first call kills its own process first (a sidecar gone between a
# job and its hooks: the tests restart it).
class TenantWorker
  include Sidekiq::Worker
  sidekiq_options retry: 0

  sidekiq_retries_exhausted do |job, exception|
    if job["args"][1] == "crash-once" && Sidekiq.redis { |c| c.set("tenant:crashed:#{job["jid"]}", "1", nx: true) }
      Process.kill("KILL", Process.pid)
    end
    JobEvent.record!("exhausted", job, exception, Demo::Handlers.seen(job, exception))
  end

  def perform(tenant, _mode = nil)
    begin
      raise IOError, "billing said no"
    rescue IOError
      raise TenantError, tenant
    end
  end
end
