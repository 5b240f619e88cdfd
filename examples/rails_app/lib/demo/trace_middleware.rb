# frozen_string_literal: true

module Demo
  # A Sidekiq client middleware, as APM trace propagation, tenancy and uniqueness gems install
  # one. Sidekiq's poller pushes due scheduled and retried jobs through it (in the server); the
  # fastworker sidecar must too. On with DEMO_CLIENT_MIDDLEWARE=1.
  #
  # In the server it records each job it sees (the Redis list demo:client_middleware, "jid
  # queue"), stamps a trace_id, and acts on the first argument: "veto" is not yielded (the job
  # is dropped), "reroute" goes to the critical queue, "boom" raises.
  class TraceMiddleware
    LOG = "demo:client_middleware"

    def call(_worker_class, job, queue, redis_pool)
      return yield unless Sidekiq.server?

      redis_pool.with { |conn| conn.rpush(LOG, "#{job["jid"]} #{queue}") }
      job["trace_id"] ||= "trace-#{job["jid"]}"
      case Array(job["args"]).first
      when "veto" then return false
      when "reroute" then job["queue"] = "critical"
      when "boom" then raise ArgumentError, "tenant unknown"
      end
      yield
    end
  end
end
