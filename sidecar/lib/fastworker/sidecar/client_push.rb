# frozen_string_literal: true

require "sidekiq"

module Fastworker
  module Sidecar
    # ClientPush: what Sidekiq's poller does to a due job between taking it from the retry or
    # schedule set and writing it to its queue (scheduled.rb: `Sidekiq::Client.push(load_json(job))`):
    # normalize_item, the app's client middleware chain, then the stamp raw_push writes. The
    # worker removes and pushes in one atomic script with what this answers, so a crash between the
    # two loses nothing (Sidekiq pops first and loses the job if push raises).
    #
    # Duties:
    # 1. Say whether the app has client middleware (/health "client_middleware"): without any,
    #    the worker normalizes by itself and skips the round trip.
    # 2. For each due member, answer one of:
    #    - {"queue" => q, "job" => json}: push it (middleware may have changed queue or payload);
    #    - {"at" => score, "job" => json}: a middleware set "at", so it goes back to the schedule
    #      set, as atomic_push schedules such a payload;
    #    - {"dropped" => true}: a middleware did not yield, so Sidekiq would not push it;
    #    - {"error" => reason}: normalize_item or a middleware raised. The error goes to the app's
    #      error handlers, as the poller's handle_exception; the worker moves the job to the dead
    #      set with the reason rather than lose it or retry it every poll.
    # 3. enqueued_at in the installed Sidekiq's format: integer ms on 8.x, float seconds before.
    module ClientPush
      module_function

      def middleware?
        !Compat.client_middleware.empty?
      end

      def call(members)
        client = ::Sidekiq::Client.new
        Compat.with_app_executor { members.map { |raw| push_one(client, raw) } }
      end

      def push_one(client, raw)
        item = ::Sidekiq.load_json(raw)
        normed = client.send(:normalize_item, item)
        payload = client.middleware.invoke(item["class"], normed, normed["queue"], client.redis_pool) { normed }
        return {"dropped" => true} unless payload

        if payload.key?("at")
          at = payload["at"]
          payload = payload.reject { |k, _| k == "at" || k == "enqueued_at" }
          {"at" => at.to_f, "job" => ::Sidekiq.dump_json(payload)}
        else
          payload["enqueued_at"] = Compat.enqueued_at_now
          {"queue" => payload["queue"].to_s, "job" => ::Sidekiq.dump_json(payload)}
        end
      rescue => e
        Compat.handle_exception(e, {context: "Client middleware for a due job", job: item.is_a?(Hash) ? item : nil,
                                    jobstr: raw})
        {"error" => "#{e.class}: #{e.message}"[0, 500]}
      end
    end
  end
end
